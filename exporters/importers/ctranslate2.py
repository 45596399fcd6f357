"""Reading CTranslate2 ``model.bin`` files (faster-whisper's format) without CTranslate2.

Layout (little endian), as CTranslate2's ``ModelSpec.save`` writes it, binary version 6:

    u32 binary_version | string spec_name | u32 spec_revision | u32 n_variables
    n_variables x { string name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes }
    u32 n_aliases x { string alias | string target }

``string`` is a u16 length followed by that many bytes (NUL-terminated). dtype numbers follow
CTranslate2's ``DataType``: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
Every length is checked against the file before it is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebridge.errors import CorruptArtifactError

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
SUPPORTED_VERSIONS = (5, 6)


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CorruptArtifactError(f"CTranslate2 model '{self.path.name}' is truncated (needs byte "
                                       f"{self.pos + n}, has {len(self.data)}).")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        return self.take(self.u16()).rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` into numpy arrays (copies, so the file may be closed)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    version = r.u32()
    if version not in SUPPORTED_VERSIONS:
        raise CorruptArtifactError(f"'{path.name}' is CTranslate2 binary version {version}; supported: "
                                   f"{SUPPORTED_VERSIONS}.")
    spec, revision = r.string(), r.u32()
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.u32()):
        name = r.string()
        dims = [r.u32() for _ in range(r.u8())]
        dtype = r.u8()
        n_bytes = r.u32()
        raw = r.take(n_bytes)
        if dtype not in DTYPES:
            raise CorruptArtifactError(f"variable '{name}' in '{path.name}' has unsupported dtype {dtype}.")
        arr = np.frombuffer(raw, dtype=DTYPES[dtype])
        if arr.size != int(np.prod(dims)):
            raise CorruptArtifactError(f"variable '{name}' in '{path.name}': {arr.size} values for shape {dims}.")
        variables[name] = arr.reshape(dims).copy()
    aliases = {}
    if r.pos < len(r.data):
        for _ in range(r.u32()):
            alias = r.string()
            aliases[alias] = r.string()
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)
