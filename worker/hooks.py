"""Application hooks: the application's own reactions to events, run in the event's transaction.

An application writes, in a module of its own::

    from worker.hooks import hook

    @hook("user.created")
    def send_welcome(event: Event, session: Session) -> None:
        session.execute(insert(outbox).values(kind="welcome", user_clerk_id=event.entity_id))

and names that module in ``CLERK_SYNC_HOOKS`` or in an entry point of the ``clerk_sync.hooks``
group. The worker imports those modules once, at start (``load``), before its pool forks; a
module that cannot be imported, that registers no hook, or a hook for an event type that is not
synced stops the worker with one line. ``worker.pipeline.hooks`` runs them; docs/hooks.md says
when (once per distinct applied event) and what a failing hook does to its event.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from shared.config import ConfigError
from shared.events import SYNCED_TYPES, Event

ENTRY_POINT_GROUP = "clerk_sync.hooks"
SETTING = "CLERK_SYNC_HOOKS"


class HookFunction(Protocol):
    """What a hook is: it gets the validated event and the event's session, and must not commit."""

    def __call__(self, event: Event, session: Session, /) -> None: ...


F = TypeVar("F", bound=Callable[[Event, Session], None])


@dataclass(frozen=True)
class Hook:
    """One registered hook: its name (``module:qualname``, as ``last_error`` shows it) and its types."""

    name: str
    function: HookFunction
    event_types: tuple[str, ...]


class HookDefinitionError(Exception):
    """A hook is declared wrongly (no event type, or one that is not synced); the message is one line."""


# Every hook decorated so far, by the module that defines it, in the order they were decorated.
_REGISTERED: dict[str, list[Hook]] = {}


def hook(*event_types: str) -> Callable[[F], F]:
    """Register the decorated function to run for ``event_types`` (e.g. "user.created")."""
    unknown = [t for t in event_types if t not in SYNCED_TYPES]

    def register(function: F) -> F:
        name = f"{function.__module__}:{function.__qualname__}"
        if not event_types:
            raise HookDefinitionError(f"{name}: @hook names no event type")
        if unknown:
            raise HookDefinitionError(f"{name}: {unknown[0]!r} is not an event type clerk-sync syncs")
        registered = _REGISTERED.setdefault(function.__module__, [])
        registered[:] = [h for h in registered if h.name != name]  # a module imported again replaces its own
        registered.append(Hook(name, function, tuple(dict.fromkeys(event_types))))
        return function

    return register


HookTable = Mapping[str, tuple[Hook, ...]]  # event type -> its hooks, in the order they run


def load(modules: Sequence[str]) -> HookTable:
    """Import the entry point group's modules, then ``modules``; their hooks by event type.

    Raises ConfigError with one line naming what is wrong. Hooks run in this order: entry
    points by name, then the setting's modules as listed, each module's hooks as decorated.
    """
    sources = [(f"entry point {ep.name!r} of {ENTRY_POINT_GROUP}", ep.value) for ep in _entry_points()]
    sources += [(SETTING, module) for module in modules]
    hooks: dict[str, Hook] = {}
    for source, module in sources:
        for registered in _import(source, module):
            hooks.setdefault(registered.name, registered)
    table: dict[str, list[Hook]] = {}
    for registered in hooks.values():
        for event_type in registered.event_types:
            table.setdefault(event_type, []).append(registered)
    return {event_type: tuple(listed) for event_type, listed in table.items()}


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _import(source: str, value: str) -> list[Hook]:
    """The hooks that module ``value`` (and its submodules) registered, importing it if need be."""
    module = value.partition(":")[0].strip()  # an entry point names a module; ":attr" is not used
    try:
        importlib.import_module(module)
    except HookDefinitionError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ImportError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the finder said
        raise ConfigError(f"{source}: cannot import {module!r} ({type(exc).__name__}: {reason})") from None
    except Exception as exc:  # the module's own code failed: its class, never its message (may hold values)
        raise ConfigError(f"{source}: importing {module!r} raised {type(exc).__name__}") from None
    found = [
        registered
        for defined_in, listed in _REGISTERED.items()
        if defined_in == module or defined_in.startswith(f"{module}.")
        for registered in listed
    ]
    if not found:
        raise ConfigError(f"{source}: {module!r} registers no hook (decorate its functions with @hook)")
    return found
