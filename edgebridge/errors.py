"""The one exception hierarchy of edgebridge.

Every error a user can cause (bad input, a bad bundle, a drift beyond tolerance) is an
``EdgebridgeError``. Messages say what is wrong *and* what to do about it; the CLI prints them
without a traceback and exits non-zero.
"""

from __future__ import annotations


class EdgebridgeError(Exception):
    """Base class of every error edgebridge raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)


# --- bundle and manifest ---------------------------------------------------------------------


class BundleError(EdgebridgeError):
    """A bundle folder is missing, incomplete or not writable."""


class ManifestError(BundleError):
    """The manifest is missing, unreadable, incomplete or from an unsupported schema."""


class IntegrityError(BundleError):
    """A bundle file does not match the sha256 recorded in the manifest."""


class CorruptArtifactError(BundleError):
    """An ONNX / OpenVINO IR / GGUF file fails validation before it reaches an engine."""


class BundleExistsError(BundleError):
    """The export target exists and --force was not given."""


# --- export ----------------------------------------------------------------------------------


class ExportError(EdgebridgeError):
    """Exporting a component failed."""


class UnsupportedModelError(ExportError):
    """The model folder holds a family, architecture or tokenizer that edgebridge cannot export."""


class ParityError(ExportError):
    """An exported artifact drifts from the PyTorch reference beyond its recorded tolerance."""

    def __init__(self, component: str, figure: str, value: float, limit: float, *, hint: str | None = None):
        self.component = component
        self.figure = figure
        self.value = value
        self.limit = limit
        super().__init__(
            f"parity gate failed for {component}: {figure} = {value:.6g} (limit {limit:.6g}).",
            hint=hint or "The export was not written. Report this with the model folder's config.json.",
        )


class ShapeMismatchError(ExportError):
    """Exported outputs have a different shape than the reference."""


# --- run time --------------------------------------------------------------------------------


class InputError(EdgebridgeError):
    """A user input (image, audio, prompt, array) cannot be used."""


class ImageInputError(InputError):
    """An image cannot be decoded or is unsafe to decode."""


class AudioInputError(InputError):
    """An audio file cannot be decoded or is unsupported."""


class PromptError(InputError):
    """The prompt does not fit the model (placeholders, context length)."""


class ContextOverflowError(PromptError):
    """The prompt (with its image/audio embeddings) does not fit the context window."""


class EmbeddingShapeError(InputError):
    """An embedding array handed to the LLM has the wrong width, dtype or layout."""


class NonFiniteError(InputError):
    """An array holds NaN or Inf where finite numbers are needed."""


class BackendError(EdgebridgeError):
    """An inference engine is unavailable or failed."""


class BackendUnavailableError(BackendError):
    """The requested backend is not installed or not registered."""


class StaticShapeError(InputError):
    """An input would need another shape than a static-shape bundle was exported with."""
