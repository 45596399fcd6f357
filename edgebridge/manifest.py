"""The bundle manifest (``edgebridge.json``): what a bundle holds and how to run it.

The manifest is the *only* thing the runtime reads to run a bundle: components and their files,
tensor shapes and dtypes, preprocessing, the prompt layout and the measured parity of every
artifact. ``MANIFEST.md`` beside this file documents every key. Parsing is strict: a missing key
names its path (``components.llm.artifacts.gguf.files``), and a newer schema is refused with a
message that says to upgrade edgebridge.

Shape notation (used in ``TensorSpec.shape``): an int is a fixed size, a string names a dynamic
axis (``"batch"``, ``"frames"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from edgebridge.errors import ManifestError
from edgebridge.typed import ReadAsDict, fields_jsonable, to_jsonable

MANIFEST_NAME = "edgebridge.json"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is a few KiB; anything this big is not ours


# One spelling of float precisions everywhere (GGUF's and OpenVINO's): ``f32``, ``f16``. Bundles
# written before 0.2 spelled encoder artifacts ``fp32`` / ``fp16``; they are read as the new spelling.
PRECISION_ALIASES = {"fp32": "f32", "fp16": "f16", "float32": "f32", "float16": "f16"}


def canonical_precision(precision: str) -> str:
    """``fp32`` -> ``f32``, ``fp16`` -> ``f16``; every other precision as it is (lower case)."""
    p = precision.strip().lower()
    return PRECISION_ALIASES.get(p, p)


class Role(str, Enum):
    """What a component does (``components.NAME.role``)."""

    ENCODER = "encoder"  # encoder + bridge graph: media -> LLM-width embeddings
    LLM = "llm"
    TOOL = "tool"  # a model that turns a modality into text for the prompt


class LayoutKind(str, Enum):
    """How one placeholder in the prompt expands (``inputs.MODALITY.layout.kind``)."""

    REPEAT = "repeat"  # the item's embeddings where the placeholder stands (LLaVA)
    PREFIX = "prefix"  # before the whole prompt, BOS included (InstructBLIP)
    TEXT = "text"  # a tool's text (``template``)
    IDEFICS2_CROPS = "idefics2-crops"  # every crop between fake tokens
    IDEFICS3_GRID = "idefics3-grid"  # tiles behind row/column tokens, then the global image
    TIMESTAMPED_FRAMES = "timestamped-frames"  # each temporal patch behind its time, in its own wrap (Qwen3-VL)
    PAN_AND_SCAN = "pan-and-scan"  # the image in its wrap, then its crops (if any) in theirs (Gemma 3)


class PositionKind(str, Enum):
    """How a modality's embeddings are numbered in the LLM (``inputs.MODALITY.layout.positions``)."""

    SEQUENTIAL = "sequential"  # one position per embedding, in order
    MROPE = "mrope"  # (t, h, w) grid positions from the next position on; text goes on from the largest + 1


def _enum(kind: type[Enum], value: str, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ManifestError(f"manifest key '{where}' is '{value}'; this edgebridge knows "
                            f"{', '.join(k.value for k in kind)}.",
                            hint="Upgrade edgebridge, or re-export the bundle with this version.") from None


class _Fields:
    """Typed access to one JSON object, with errors that name the key path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(
                f"manifest key '{where}' must be an object, got {type(data).__name__}.",
                hint="Re-export the bundle with `edgebridge export`.",
            )
        self.data = data
        self.where = where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def req(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.data:
            raise ManifestError(
                f"manifest is missing the key '{self._path(key)}'.",
                hint="The bundle is incomplete or was edited by hand; re-export it with `edgebridge export`.",
            )
        return self._check(key, self.data[key], kind)

    def opt(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.data or self.data[key] is None:
            return default
        return self._check(key, self.data[key], kind)

    def _check(self, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # JSON has one number type: accept ints where floats are expected, never bools as numbers
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) and bool not in kinds:
            value_ok = False
        else:
            value_ok = isinstance(value, kinds)
        if not value_ok:
            names = "/".join(k.__name__ for k in kinds)
            raise ManifestError(
                f"manifest key '{self._path(key)}' must be {names}, got {type(value).__name__}.",
                hint="Re-export the bundle with `edgebridge export`.",
            )
        return value

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.req(key, dict), self._path(key))


@dataclass
class TensorSpec:
    """One graph input or output: ``shape`` mixes ints (fixed) and names (dynamic axes)."""

    name: str
    dtype: str
    shape: list[int | str]

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "TensorSpec":
        f = _Fields(data, where)
        shape = f.req("shape", list)
        for dim in shape:
            if not isinstance(dim, (int, str)) or isinstance(dim, bool):
                raise ManifestError(f"manifest key '{where}.shape' holds {dim!r}; dims are ints or axis names.")
        return cls(name=f.req("name", str), dtype=f.req("dtype", str), shape=shape)


@dataclass
class Parity:
    """Measured agreement of an artifact with its reference, and the tolerance it was held to.

    ``metrics`` and ``tolerance`` share keys; see ``edgebridge.parity`` for which way each bound goes.
    """

    reference: str
    metrics: dict[str, float]
    tolerance: dict[str, float]
    passed: bool
    settings: dict[str, Any] = field(default_factory=dict)
    samples: int = 0

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Parity":
        f = _Fields(data, where)
        return cls(
            reference=f.req("reference", str),
            metrics=f.req("metrics", dict),
            tolerance=f.req("tolerance", dict),
            passed=f.req("passed", bool),
            settings=f.opt("settings", dict, {}),
            samples=f.opt("samples", int, 0),
        )


@dataclass
class Artifact:
    """One engine-format file set of a component (an ONNX file, an IR pair, a GGUF)."""

    format: str
    files: list[str]
    precision: str
    parity: Parity | None = None
    quantization: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.precision = canonical_precision(self.precision)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Artifact":
        f = _Fields(data, where)
        parity = f.opt("parity", dict)
        return cls(
            format=f.req("format", str),
            files=_non_empty(f.req("files", list), f"{where}.files"),
            precision=canonical_precision(f.req("precision", str)),
            parity=Parity.from_dict(parity, f"{where}.parity") if parity is not None else None,
            quantization=f.opt("quantization", dict),
            details=f.opt("details", dict, {}),
        )


@dataclass
class Component:
    """A stage of the model: an encoder + bridge graph, the LLM, or a tool model."""

    role: Role
    modality: str  # "image" | "audio" | "text"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    artifacts: dict[str, Artifact]
    bridge: dict[str, Any] | None = None
    description: str = ""
    tool: dict[str, Any] | None = None  # role "tool": its kind and settings (runtimes/tools)
    engine_choice: dict[str, Any] | None = None  # the encoder engine a latency export measured fastest

    def __post_init__(self) -> None:  # exporters may hand the role as a string
        self.role = Role(self.role)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Component":
        f = _Fields(data, where)
        arts = f.sub("artifacts")
        if not arts.data:
            raise ManifestError(f"manifest key '{where}.artifacts' is empty; a component needs at least one artifact.")
        for key in ("inputs", "outputs"):
            if not f.req(key, list):
                raise ManifestError(f"manifest key '{where}.{key}' is empty; a component has at least one.",
                                    hint="Re-export the bundle.")
        return cls(
            role=_enum(Role, f.req("role", str), f"{where}.role"),
            modality=f.req("modality", str),
            inputs=[TensorSpec.from_dict(t, f"{where}.inputs[{i}]") for i, t in enumerate(f.req("inputs", list))],
            outputs=[TensorSpec.from_dict(t, f"{where}.outputs[{i}]") for i, t in enumerate(f.req("outputs", list))],
            artifacts={k: Artifact.from_dict(v, f"{where}.artifacts.{k}") for k, v in arts.data.items()},
            bridge=f.opt("bridge", dict),
            description=f.opt("description", str, ""),
            tool=f.opt("tool", dict),
            engine_choice=f.opt("engine_choice", dict),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object; ``engine_choice`` only where it is set (older manifests write back unchanged)."""
        out = fields_jsonable(self)
        if out.get("engine_choice") is None:
            out.pop("engine_choice")
        return out

    @property
    def recorded_backend(self) -> str | None:
        """The encoder backend the export measured fastest on its machine (``engine_choice``), if any."""
        backend = (self.engine_choice or {}).get("backend")
        return backend if isinstance(backend, str) else None


@dataclass(eq=False)
class Wrap:
    """Tokens put around a placeholder (InternVL's ``<img>...</img>``)."""

    before: str
    after: str

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Wrap":
        f = _Fields(data, where)
        return cls(before=f.req("before", str), after=f.req("after", str))

    def to_dict(self) -> dict[str, str]:
        return {"before": self.before, "after": self.after}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (Wrap, dict)) and to_jsonable(other) == self.to_dict()


@dataclass(eq=False)
class Layout(ReadAsDict):
    """How one placeholder expands in the prompt (``inputs.MODALITY.layout``); see ``LayoutKind``.

    ``wrap`` puts tokens around every placeholder, ``wrap_if_missing`` around those that have
    neither (Qwen2-Audio); ``template`` formats a tool's text; the grid kinds name their tokens;
    ``collapse`` lists (doubled, single) text pairs merged after expansion (Idefics2's fake tokens);
    ``bidirectional``: the media's rows attend to each other both ways while the LLM prefills them
    (Gemma 3), not only to earlier rows.
    """

    kind: LayoutKind = LayoutKind.REPEAT
    wrap: Wrap | None = None
    wrap_if_missing: Wrap | None = None
    template: str = "{text}"
    fake_token: str = ""
    global_token: str = ""
    row_col_token: str = ""
    collapse: list[tuple[str, str]] = field(default_factory=list)
    positions: PositionKind = PositionKind.SEQUENTIAL
    bidirectional: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Layout":
        f = _Fields(data, where)
        wraps = {k: Wrap.from_dict(f.data[k], f"{where}.{k}") for k in ("wrap", "wrap_if_missing") if f.data.get(k)}
        collapse = f.opt("collapse", list, [])
        if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in collapse):
            raise ManifestError(f"manifest key '{where}.collapse' must hold [doubled, single] string pairs.")
        return cls(kind=_enum(LayoutKind, f.opt("kind", str, "repeat"), f"{where}.kind"), **wraps,
                   template=f.opt("template", str, "{text}"), fake_token=f.opt("fake_token", str, ""),
                   global_token=f.opt("global_token", str, ""), row_col_token=f.opt("row_col_token", str, ""),
                   collapse=[(a, b) for a, b in collapse],
                   positions=_enum(PositionKind, f.opt("positions", str, "sequential"), f"{where}.positions"),
                   bidirectional=f.opt("bidirectional", bool, False))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, with only the keys that differ from the defaults (as exporters wrote them)."""
        out: dict[str, Any] = {"kind": self.kind.value}
        for name in ("wrap", "wrap_if_missing"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).to_dict()
        for name, default in (("template", "{text}"), ("fake_token", ""), ("global_token", ""),
                              ("row_col_token", "")):
            if getattr(self, name) != default or (name == "template" and self.kind is LayoutKind.TEXT):
                out[name] = getattr(self, name)
        if self.collapse:
            out["collapse"] = [list(p) for p in self.collapse]
        if self.positions is not PositionKind.SEQUENTIAL:
            out["positions"] = self.positions.value
        if self.bidirectional:
            out["bidirectional"] = True
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (Layout, dict)) and to_jsonable(other) == self.to_dict()


@dataclass(eq=False)
class TextInputs:
    """The prompt as an encoder input (``preprocessing.text_inputs``: a Q-Former reads the instruction)."""

    tokenizer: str  # "wordpiece"
    vocab: str  # bundle file
    input_ids: str  # graph input names
    attention_mask: str
    lowercase: bool = True
    max_length: int | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "TextInputs":
        f = _Fields(data, where)
        return cls(tokenizer=f.req("tokenizer", str), vocab=f.req("vocab", str), input_ids=f.req("input_ids", str),
                   attention_mask=f.req("attention_mask", str), lowercase=f.opt("lowercase", bool, True),
                   max_length=f.opt("max_length", int))


@dataclass(eq=False)
class Preprocessing(ReadAsDict):
    """How a modality's items become encoder inputs (``inputs.MODALITY.preprocessing``).

    ``kind`` names a registered preprocessor (``edgebridge.preprocess``), which reads ``options``
    (the whole JSON object: each kind has its own keys, documented with the kind); ``text_inputs``
    is typed because the runtime itself, not the preprocessor, fills those inputs.
    """

    kind: str
    options: dict[str, Any]
    text_inputs: TextInputs | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Preprocessing":
        f = _Fields(data, where)
        text = f.opt("text_inputs", dict)
        return cls(kind=f.req("kind", str), options=dict(f.data),
                   text_inputs=TextInputs.from_dict(text, f"{where}.text_inputs") if text else None)

    def to_dict(self) -> dict[str, Any]:
        return {**self.options, "kind": self.kind}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(other) == self.to_dict()


@dataclass
class ModalityInput:
    """How one modality (image, audio) reaches the LLM: preprocessing, encoder, prompt placeholder."""

    component: str
    preprocessing: Preprocessing
    placeholder: str
    tokens_per_item: int
    layout: Layout = field(default_factory=Layout)

    def __post_init__(self) -> None:  # exporters hand plain dicts
        if not isinstance(self.preprocessing, Preprocessing):
            self.preprocessing = Preprocessing.from_dict(dict(self.preprocessing), "preprocessing")
        if not isinstance(self.layout, Layout):
            self.layout = Layout.from_dict(dict(self.layout), "layout")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ModalityInput":
        f = _Fields(data, where)
        return cls(
            component=f.req("component", str),
            preprocessing=Preprocessing.from_dict(f.req("preprocessing", dict), f"{where}.preprocessing"),
            placeholder=f.req("placeholder", str),
            tokens_per_item=f.req("tokens_per_item", int),
            layout=Layout.from_dict(f.opt("layout", dict, {"kind": "repeat"}), f"{where}.layout"),
        )


@dataclass(eq=False)
class StaticShape(ReadAsDict):
    """A fixed-shape encoder graph (``static_shapes.COMPONENT``, ``edgebridge export --static``):
    ``batch`` rows per run, every input's full shape, and the axes that may be zero-padded."""

    batch: int
    inputs: dict[str, list[int]]
    pad_axes: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "StaticShape":
        f = _Fields(data, where)
        batch = f.req("batch", int)
        inputs = f.req("inputs", dict)
        pad_axes = f.opt("pad_axes", dict, {})
        ok = batch >= 1 and all(isinstance(s, list) and s and all(isinstance(d, int) and d >= 1 for d in s)
                                for s in inputs.values())
        if not ok or not all(isinstance(a, list) and all(isinstance(x, int) for x in a) for a in pad_axes.values()):
            raise ManifestError(f"manifest key '{where}' holds an invalid static shape (batch {batch!r}).",
                                hint="Re-export the bundle with --static.")
        return cls(batch=batch, inputs={k: list(v) for k, v in inputs.items()},
                   pad_axes={k: list(v) for k, v in pad_axes.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "inputs": self.inputs, "pad_axes": self.pad_axes}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and to_jsonable(dict(other)) == self.to_dict()


@dataclass
class PromptLayout:
    """How text is turned into tokens: chat template, BOS, stop tokens.

    ``chat_content`` says how the chat template wants a user message: ``"string"`` (the prompt,
    placeholders included) or ``"parts"`` (a list of ``{"type": "image"}`` / ``{"type": "text"}``).
    ``prompt_suffix``: text the processor puts after every prompt (PaliGemma's newline). ``prefix_lm``:
    the whole prompt, media and text, attends both ways during prefill and only the answer is causal
    (PaliGemma's prefix-LM attention).
    """

    add_bos: bool
    stop_token_ids: list[int]
    chat_template: str | None = None
    chat_content: str = "string"
    special_tokens: dict[str, str] = field(default_factory=dict)
    prompt_suffix: str = ""
    prefix_lm: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "PromptLayout":
        f = _Fields(data, where)
        return cls(
            add_bos=f.req("add_bos", bool),
            stop_token_ids=f.req("stop_token_ids", list),
            chat_template=f.opt("chat_template", str),
            chat_content=f.opt("chat_content", str, "string"),
            special_tokens=f.opt("special_tokens", dict, {}),
            prompt_suffix=f.opt("prompt_suffix", str, ""),
            prefix_lm=f.opt("prefix_lm", bool, False),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object; the keys added for PaliGemma only where they are set (older manifests read and
        write back unchanged)."""
        out = fields_jsonable(self)
        for name, default in (("prompt_suffix", ""), ("prefix_lm", False)):
            if out.get(name) == default:
                out.pop(name)
        return out


@dataclass
class FileEntry:
    sha256: str
    bytes: int

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "FileEntry":
        f = _Fields(data, where)
        return cls(sha256=f.req("sha256", str), bytes=f.req("bytes", int))


@dataclass
class Manifest:
    """The whole ``edgebridge.json``."""

    family: str
    source: dict[str, Any]
    components: dict[str, Component]
    inputs: dict[str, ModalityInput]
    prompt: PromptLayout
    files: dict[str, FileEntry] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    edgebridge_version: str = ""
    created_utc: str = ""
    static_shapes: dict[str, StaticShape] | None = None

    def __post_init__(self) -> None:  # exporters hand static shapes as plain dicts
        if self.static_shapes:
            self.static_shapes = {k: v if isinstance(v, StaticShape) else StaticShape.from_dict(v, f"static_shapes.{k}")
                                  for k, v in self.static_shapes.items()}

    # --- parsing ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        f = _Fields(data, "")
        version = f.req("schema_version", int)
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"the bundle's manifest uses schema version {version}; this edgebridge reads up to {SCHEMA_VERSION}.",
                hint="Upgrade edgebridge (`pip install -U edgebridge`) or re-export the bundle with this version.",
            )
        if version < 1:
            raise ManifestError(f"manifest schema_version {version} is not valid (the first schema is 1).")
        comps = f.sub("components")
        inputs = f.sub("inputs")
        files = f.sub("files")
        manifest = cls(
            schema_version=version,
            edgebridge_version=f.opt("edgebridge_version", str, ""),
            created_utc=f.opt("created_utc", str, ""),
            family=f.req("family", str),
            source=f.req("source", dict),
            components={k: Component.from_dict(v, f"components.{k}") for k, v in comps.data.items()},
            inputs={k: ModalityInput.from_dict(v, f"inputs.{k}") for k, v in inputs.data.items()},
            prompt=PromptLayout.from_dict(f.req("prompt", dict), "prompt"),
            files={k: FileEntry.from_dict(v, f"files.{k}") for k, v in files.data.items()},
            static_shapes=_static_shapes(f.opt("static_shapes", dict)),
        )
        manifest._check_references()
        manifest._check_token_counts()
        return manifest

    def _check_token_counts(self) -> None:
        for modality, spec in self.inputs.items():
            role = self.components[spec.component].role
            if spec.tokens_per_item < 0 or (role is Role.ENCODER and spec.tokens_per_item == 0):
                raise ManifestError(f"manifest key 'inputs.{modality}.tokens_per_item' is {spec.tokens_per_item}; an "
                                    "encoder gives each item at least one embedding.", hint="Re-export the bundle.")

    def _check_references(self) -> None:
        llms = [n for n, c in self.components.items() if c.role is Role.LLM]
        if len(llms) != 1:
            raise ManifestError(f"a bundle needs exactly one component with role 'llm', found {len(llms)}.")
        for modality, spec in self.inputs.items():
            if spec.component not in self.components:
                raise ManifestError(
                    f"manifest input '{modality}' names component '{spec.component}', which the bundle does not have."
                )
        for name, comp in self.components.items():
            for fmt, art in comp.artifacts.items():
                for rel in art.files:
                    if rel not in self.files:
                        raise ManifestError(
                            f"components.{name}.artifacts.{fmt} lists '{rel}', which has no entry in 'files'.",
                            hint="Re-export the bundle.",
                        )

    # --- convenience -----------------------------------------------------------------------

    @property
    def llm_name(self) -> str:
        return next(n for n, c in self.components.items() if c.role is Role.LLM)

    @property
    def llm(self) -> Component:
        return self.components[self.llm_name]

    def static_shape(self, component: str) -> StaticShape | None:
        return (self.static_shapes or {}).get(component)

    def to_dict(self) -> dict[str, Any]:
        data = fields_jsonable(self)
        if data.get("static_shapes") is None:
            data.pop("static_shapes")
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"


def _non_empty(items: list[Any], where: str) -> list[Any]:
    if not items or not all(isinstance(i, str) and i for i in items):
        raise ManifestError(f"manifest key '{where}' must list at least one file name.", hint="Re-export the bundle.")
    return items


def _static_shapes(data: dict[str, Any] | None) -> dict[str, StaticShape] | None:
    if data is None:
        return None
    return {k: StaticShape.from_dict(v, f"static_shapes.{k}") for k, v in data.items()}


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate ``bundle_dir/edgebridge.json`` (no file hashing; see ``Bundle.open``)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise ManifestError(
            f"'{bundle_dir}' is not a folder.", hint="Pass the bundle folder that `edgebridge export` wrote."
        )
    if not path.is_file():
        raise ManifestError(
            f"'{bundle_dir}' has no {MANIFEST_NAME}; it is not an edgebridge bundle.",
            hint="Pass the folder that `edgebridge export` wrote.",
        )
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes; it is not an edgebridge manifest.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}).", hint="Re-export the bundle.") from None
    return Manifest.from_dict(data)
