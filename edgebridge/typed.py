"""Plain-JSON views of typed objects (the manifest's subfields, a generation's timings).

Typed objects keep the JSON they came from or go to readable by key, so code written against the
JSON (``layout["wrap"]``, ``result.timings["ttft_ms"]``) keeps working next to attribute access.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any, Iterator, Mapping


def to_jsonable(value: Any) -> Any:
    """Dataclasses (their own ``to_dict`` where they have one), enums, lists and dicts -> plain JSON."""
    if hasattr(value, "to_dict") and is_dataclass(value):
        return value.to_dict()
    if is_dataclass(value):
        return fields_jsonable(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def fields_jsonable(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as plain JSON (each through ``to_jsonable``)."""
    return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}


class ReadAsDict(Mapping):
    """Read access by key to a typed manifest field, as to its JSON object (``layout["wrap"]``)."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
