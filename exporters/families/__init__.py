"""Model families, one file each, found by ``model_type``.

``family_for(folder)`` reads ``config.json`` and returns the family that exports it; an unknown
model type gets an error that lists every supported family.
"""

from __future__ import annotations

from pathlib import Path

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.families.base import Family, read_config
from edgebridge.registry import discover

_FAMILIES: dict[str, Family] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: register one instance of ``cls`` under its ``name``."""
    if not cls.name or not cls.model_types:
        raise TypeError(f"{cls.__name__} needs a name and model_types")
    _FAMILIES[cls.name] = cls()
    return cls


def _discover() -> None:
    discover(__name__, __path__, lambda name: name != "base" and not name.startswith("_"))


def families() -> dict[str, Family]:
    _discover()
    return dict(sorted(_FAMILIES.items()))


def family_by_name(name: str) -> Family:
    fams = families()
    if name not in fams:
        raise UnsupportedModelError(f"unknown family '{name}'.", hint=f"Supported: {', '.join(fams)}.")
    return fams[name]


def family_for(folder: Path) -> Family:
    model_type = read_config(folder).get("model_type")
    for fam in families().values():
        if model_type in fam.model_types:
            return fam
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in families().values())
    raise UnsupportedModelError(
        f"model type '{model_type}' in {Path(folder) / 'config.json'} is not supported.",
        hint=f"Supported families: {supported}.",
    )
