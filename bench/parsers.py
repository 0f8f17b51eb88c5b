"""Which validation library parses Clerk's bodies fastest: msgspec (what shared/events.py uses) or pydantic 2.

`python -m bench.parsers` parses each sample of a synced type many times with both, the pydantic models
built from the msgspec structs' own field definitions (shared/events.py's EVENT_TYPES, so the two cannot
drift), and prints microseconds per body.
"""

from __future__ import annotations

import statistics
import time
import types
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, model_validator

from shared.clerk_objects import ClerkTime, check_times
from shared.events import EVENT_TYPES, SYNCED_TYPES, parse

SAMPLES = Path(__file__).resolve().parents[1] / "worker" / "cli" / "samples"
ROUNDS = 2000
# The msgspec.Meta constraints the structs use, and pydantic's Field arguments of the same names.
CONSTRAINTS = ("ge", "le", "pattern", "max_length")


class _Model(BaseModel):
    # msgspec's defaults: unknown fields ignored, no coercion between types.
    model_config = ConfigDict(extra="ignore", strict=True)


def _times_checked(names: tuple[str, ...]) -> Any:
    """What the structs' ``__post_init__`` adds to the bounds: ``check_times`` refuses the gap between the ranges."""

    def check(model: BaseModel) -> BaseModel:
        check_times(model, *names)  # type: ignore[arg-type]
        return model

    return model_validator(mode="after")(check)


def _pydantic(annotation: Any) -> Any:
    """The pydantic annotation for a msgspec struct field's resolved type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        metas = [extra for extra in annotation.__metadata__ if isinstance(extra, msgspec.Meta)]
        rules = {name: getattr(meta, name) for meta in metas for name in CONSTRAINTS if getattr(meta, name) is not None}
        return Annotated[_pydantic(args[0]), Field(**rules)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_pydantic(arg) for arg in args)]  # noqa: UP007 - built at run time
    if origin in (list, dict):
        return origin[tuple(_pydantic(arg) for arg in args)]
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return model_of(annotation)
    return annotation


@cache
def model_of(struct: type[msgspec.Struct]) -> type[BaseModel]:
    """A pydantic model declaring the fields and rules of a msgspec struct, read from the struct itself.

    Its times are checked as ``check_times`` checks them. The envelope's ``clerk_data`` (a
    ``msgspec.Raw`` that ``parse`` fills in, never read from the body) is left out; a tagged
    struct gets its tag as a ``Literal`` field to discriminate on.
    """
    fields: dict[str, Any] = {}
    times = tuple(
        field.name for field in msgspec.structs.fields(struct) if ClerkTime in (field.type, *get_args(field.type))
    )
    config = struct.__struct_config__
    if isinstance(config.tag_field, str):
        fields[config.tag_field] = (Literal[config.tag], ...)
    for field in msgspec.structs.fields(struct):
        if field.type is msgspec.Raw:
            continue
        fields[field.name] = (_pydantic(field.type), ... if field.required else field.default)
    validators = {"times": _times_checked(times)} if times else None
    return create_model(f"Pydantic{struct.__name__}", __base__=_Model, __validators__=validators, **fields)


# Every synced event type, discriminated on `type` like msgspec's tagged union.
PYDANTIC: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[tuple(model_of(struct) for struct in EVENT_TYPES.values())], Field(discriminator="type")]  # noqa: UP007
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
