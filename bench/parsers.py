"""Which validation library parses Clerk's bodies fastest: msgspec (what shared/events.py uses) or pydantic 2.

`python -m bench.parsers` parses each sample of a synced type many times with both, the pydantic models
declaring the same fields and rules as shared/clerk_objects.py, and prints microseconds per body.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.events import SYNCED_TYPES, parse

SAMPLES = Path(__file__).resolve().parents[1] / "worker" / "cli" / "samples"
ROUNDS = 2000
Time = Annotated[int, Field(ge=946_684_800, le=4_102_444_800_000, strict=True)]


def _id(prefix: str) -> Any:
    return Annotated[str, Field(pattern=f"^{prefix}[!-~]+$", max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Email(_Model):
    id: str
    email_address: str


class _Versioned(_Model):
    """Clerk's times on every synced object."""

    updated_at: Time
    created_at: Time | None = None


class _Account(_Versioned):
    """What users and organizations both carry."""

    image_url: str | None = None
    public_metadata: dict[str, Any] | None = None


class User(_Account):
    id: _id("user_")  # type: ignore[valid-type]
    primary_email_address_id: str | None = None
    email_addresses: list[Email] | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    profile_image_url: str | None = None


class Organization(_Account):
    id: _id("org_")  # type: ignore[valid-type]
    name: str | None = None
    slug: str | None = None
    logo_url: str | None = None


class Ref(_Model):
    id: _id("org_")  # type: ignore[valid-type]


class Member(_Model):
    user_id: _id("user_")  # type: ignore[valid-type]


class Membership(_Versioned):
    id: _id("orgmem_")  # type: ignore[valid-type]
    organization: Ref
    public_user_data: Member
    role: str | None = None


class Deleted(_Model):
    id: str


def _event(types: tuple[str, ...], data: type[BaseModel]) -> type[BaseModel]:
    return type(  # a pydantic model per family of types, discriminated on `type`
        f"Event_{data.__name__}",
        (_Model,),
        {"__annotations__": {"type": Literal[types], "timestamp": Time, "instance_id": str | None, "data": data},
         "instance_id": None},
    )  # fmt: skip


PYDANTIC = TypeAdapter(
    Annotated[
        _event(("user.created", "user.updated"), User)
        | _event(("organization.created", "organization.updated"), Organization)
        | _event(("organizationMembership.created", "organizationMembership.updated"), Membership)
        | _event(("user.deleted", "organization.deleted", "organizationMembership.deleted"), Deleted),
        Field(discriminator="type"),
    ]
)


def per_body(function: Any, bodies: list[str], rounds: int) -> float:
    """CPU microseconds per body (process time: what other processes do on the machine does not count)."""
    started = time.process_time()
    for _ in range(rounds):
        for body in bodies:
            function(body)
    return (time.process_time() - started) / (rounds * len(bodies)) * 1e6


def main() -> None:
    bodies = [p.read_text() for p in sorted(SAMPLES.glob("*.json")) if p.stem in SYNCED_TYPES]
    for body in bodies:
        PYDANTIC.validate_json(body)  # both accept every sample
    # Interleaved: ten alternating rounds of each, the median of each.
    results: dict[str, list[float]] = {"msgspec": [], "pydantic": []}
    for _ in range(10):
        results["msgspec"].append(per_body(parse, bodies, ROUNDS // 10))
        results["pydantic"].append(per_body(PYDANTIC.validate_json, bodies, ROUNDS // 10))
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"{len(bodies)} samples, interleaved rounds, CPU per body: msgspec {medians['msgspec']:.1f} us,"
        f" pydantic {medians['pydantic']:.1f} us ({medians['pydantic'] / medians['msgspec']:.1f}x)"
    )


if __name__ == "__main__":
    main()
