"""The typed, validated Event: the one parser of a raw event body (the worker's; the ingress never calls it).

``parse(body)`` reads a body once and returns

- a synced ``Event`` (one struct per event type, generated from the resource table): the
  envelope's ``timestamp`` and ``instance_id`` and a ``data`` of the resource's declared type;
- ``Unsynced(type)`` for an event type clerk-sync does not sync (recorded ``ignored``);

or raises ``InvalidEvent`` whose message names the field and the rule, e.g.
``invalid_payload: data.updated_at is missing``. A body that is not a valid event is
permanent: it ends ``dead`` at once and nothing of it reaches the synced tables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Union, cast

import msgspec
from msgspec import Struct

from shared.clerk_objects import ClerkTime, check_times, millis
from shared.resources import BY_EVENT_TYPE, Resource

INVALID = "invalid_payload"
# Postgres cannot store U+0000 in text or jsonb: an unescaped \u0000 escape anywhere in the body.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class InvalidEvent(Exception):
    """The body is not a valid event; the message is one line naming the field and the rule."""

    def __init__(
        self, reason: str, *, event_type: str | None = None, storable: bool = False, entity_id: str | None = None
    ) -> None:
        super().__init__(f"{INVALID}: {reason}")
        self.event_type = event_type
        # The ``data.id`` the body names, when it names one: operators find the event by it.
        self.entity_id = entity_id
        # The user and organization it names besides (a membership's member and organization, an
        # invitation's or a domain's organization), when it names them: found by them too.
        self.user_id: str | None = None
        self.organization_id: str | None = None
        # True when the body is a JSON object Postgres can hold: it is kept as the payload for operators
        # (otherwise as raw text).
        self.storable = storable


class _Envelope(Struct, tag_field="type", kw_only=True, frozen=True):
    """What every synced event carries besides its ``data``."""

    timestamp: ClerkTime
    instance_id: str | None = None
    # ``data`` exactly as sent, kept as clerk_data: filled in by ``parse``, whatever the body says
    # (any value under this key is accepted, then replaced).
    clerk_data: msgspec.Raw = msgspec.Raw(b"null")

    def __post_init__(self) -> None:
        check_times(self, "timestamp")

    @property
    def type(self) -> str:
        return cast(str, type(self).__struct_config__.tag)

    @property
    def resource(self) -> Resource:
        return BY_EVENT_TYPE[self.type]

    @property
    def timestamp_ms(self) -> int:
        """Clerk's time of the event; deletes are ordered by it."""
        return millis(self.timestamp)

    @property
    def is_delete(self) -> bool:
        return self.type == self.resource.delete_type

    @property
    def entity_id(self) -> str:
        return cast(str, self.data.id)  # type: ignore[attr-defined]

    @property
    def parents(self) -> dict[str, str]:
        """Parent resource name -> clerk_id (a membership's user and organization), when the event names them."""
        return self.names[0]

    @property
    def names(self) -> tuple[dict[str, str], str | None]:
        """The event's parents, and the user it is about besides its object (a membership's member, an
        invitee who accepted), from one reading of its data: what its ledger row is found by."""
        data = self.data  # type: ignore[attr-defined]
        if self.is_delete:
            whole = getattr(data, "as_membership", lambda: None)()
            parents = {} if whole is None else self.resource.parents_of(whole)
            return parents, parents.get("users")
        values = self.resource.row(data)
        parents = self.resource.parents_in(values)
        return parents, parents.get("users") or self.resource.user_in(values)


def _event_struct(event_type: str, data_type: type[Struct]) -> type[_Envelope]:
    name = "".join(part[:1].upper() + part[1:] for part in re.split(r"[._]", event_type)) + "Event"
    return cast(
        type[_Envelope],
        msgspec.defstruct(name, [("data", data_type)], bases=(_Envelope,), tag=event_type, module=__name__),
    )


EVENT_TYPES: dict[str, type[_Envelope]] = {}
for _type, _resource in BY_EVENT_TYPE.items():
    _data = _resource.clerk.deleted_type if _type == _resource.delete_type else None
    EVENT_TYPES[_type] = _event_struct(_type, _data or _resource.data_type)

Event = _Envelope  # every synced event is one of EVENT_TYPES' structs
SYNCED_TYPES = frozenset(EVENT_TYPES)


@dataclass(frozen=True)
class Unsynced:
    """An event of a type clerk-sync does not sync: recorded ``ignored``, without its payload."""

    type: str


class _Head(Struct):
    """Just enough of any body to tell its type and what it is about."""

    type: Any = None
    data: Any = None


class _RawData(Struct):
    """The body's ``data``, unparsed: a second, cheap pass over a body already validated."""

    data: msgspec.Raw


_synced_decoder = msgspec.json.Decoder(Union[tuple(EVENT_TYPES.values())])  # noqa: UP007 - built at run time
_head_decoder = msgspec.json.Decoder(_Head)
_raw_data_decoder = msgspec.json.Decoder(_RawData)


def parse(body: str | bytes) -> Event | Unsynced:
    """The body as an event; ``InvalidEvent`` (permanent) when it is not one."""
    text = body if isinstance(body, str) else body.decode("utf-8", "replace")
    # The substring test is cheap; the exact rule (not an escaped backslash) only runs when it matches.
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        head = _head(body)
        if unsynced := _unsynced_type(head):  # recorded without its body: nothing of it is stored
            return Unsynced(unsynced)
        raise _naming(
            InvalidEvent("the body holds \\u0000, which Postgres cannot store", event_type=_type_of(head)), head
        )
    try:
        event = cast(Event, _synced_decoder.decode(body))
        return msgspec.structs.replace(event, clerk_data=_raw_data_decoder.decode(body).data)
    except msgspec.ValidationError as exc:
        error = exc
    except msgspec.DecodeError:
        if unsynced := _unsynced_type(_lenient_head(body)):
            return Unsynced(unsynced)
        raise InvalidEvent("the body is not JSON") from None
    except RecursionError:
        raise InvalidEvent(_TOO_DEEP) from None
    head = _head(body)
    event_type = _type_of(head)
    if unsynced := _unsynced_type(head):
        return Unsynced(unsynced)
    reason = _TYPE_TWICE if event_type in SYNCED_TYPES and _type_refused(error) else _describe(error)
    raise _naming(InvalidEvent(reason, event_type=event_type, storable=head is not None), head)


# msgspec reads the first "type" of a body; Python's json and Postgres's jsonb (what an operator sees,
# and what a replay sends) read the last. When the last names a synced type that msgspec refused, the
# key is there twice.
_TYPE_TWICE = "type is given more than once, with different values"


def _type_refused(error: msgspec.ValidationError) -> bool:
    return str(error).startswith("Invalid value") and str(error).endswith(f"{_LOCATION}.type`")


_TOO_DEEP = "the body nests too deeply"


def _head(body: str | bytes) -> _Head | None:
    """The body's type and data.id, when it is a JSON object at all."""
    try:
        return _head_decoder.decode(body)
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError:
        return _lenient_head(body)
    except RecursionError:
        raise InvalidEvent(_TOO_DEEP) from None


def _lenient_head(body: str | bytes) -> _Head | None:
    """The head of a body msgspec refuses but Python's json reads (a lone surrogate's escape, which
    Postgres refuses too): enough to tell an unsynced type, which is recorded without its body."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return _Head(value.get("type"), value.get("data")) if isinstance(value, dict) else None


def _unsynced_type(head: _Head | None) -> str | None:
    """The body's type when it is one that is not synced: ``ignored``, whatever else the body holds."""
    event_type = _type_of(head)
    return event_type if event_type is not None and event_type not in SYNCED_TYPES else None


# What of an invalid body's type and data.id the ledger keeps: printable ASCII (Postgres text holds no
# NUL, and an operator's terminal gets no control characters), as much as a column shows.
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def _type_of(head: _Head | None) -> str | None:
    kind = head.type[:128] if head is not None and isinstance(head.type, str) else None
    return kind if kind and _PRINTABLE.fullmatch(kind) else None


def _naming(invalid: InvalidEvent, head: _Head | None) -> InvalidEvent:
    """``invalid`` with the ids its body names, read leniently (the body is not a valid event): its
    ``data.id``, and the user and organization a membership, invitation or domain names."""
    data = head.data if head is not None and isinstance(head.data, dict) else {}
    invalid.entity_id = _clerk_id(data.get("id"))
    invalid.user_id = _clerk_id(_field(data, "public_user_data", "user_id") or data.get("user_id"), prefix="user_")
    invalid.organization_id = _clerk_id(
        _field(data, "organization", "id") or data.get("organization_id"), prefix="org_"
    )
    return invalid


def _field(data: dict[str, Any], name: str, key: str) -> Any:
    inner = data.get(name)
    return inner.get(key) if isinstance(inner, dict) else None


def _clerk_id(value: Any, *, prefix: str = "") -> str | None:
    if not isinstance(value, str) or len(value) > 64 or not value.startswith(prefix):
        return None
    return value if _PRINTABLE.fullmatch(value) else None


_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")
_LOCATION = " - at `$"


def _describe(error: msgspec.ValidationError) -> str:
    """msgspec's message as the rule and the field it broke: ``data.updated_at is missing``."""
    message, _, where = str(error).partition(_LOCATION)
    path = where.rstrip("`").lstrip(".")
    missing = _MISSING.fullmatch(message)
    if missing:
        return f"{_join(path, missing['name'])} is missing"
    if message.startswith("Expected") and not path:
        return "the body is not a JSON object"
    if message.startswith("Expected"):
        rule = message.replace("`", "")
        return f"{path or 'the body'}: {rule[0].lower()}{rule[1:]}"
    if message.startswith("Invalid value") and path == "type":
        return "type is not a string naming an event"
    # A rule of our own (__post_init__): "updated_at is not a time ...", located at its struct.
    return _join(path, message)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_SURROGATE = "the object holds a lone UTF-16 surrogate, which Postgres cannot store"


def read_object(resource: Resource, item: Any) -> Any:
    """A Backend API object (decoded JSON) as ``resource``'s declared type; InvalidEvent when it is not one.

    Python's json reads a lone surrogate's escape (``"\\udfff"``), which msgspec refuses in a webhook
    body: such an object is not one either. Let through, it failed later with a UnicodeEncodeError
    whose repr, which Celery logs, quotes the value.
    """
    try:
        msgspec.json.encode(item)
    except UnicodeEncodeError:
        raise InvalidEvent(_SURROGATE) from None
    try:
        return msgspec.convert(item, type=resource.data_type)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_describe(exc)) from None
