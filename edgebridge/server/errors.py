"""Errors as the OpenAI API writes them: ``{"error": {"message", "type", "code", "param"}}``.

A client sees a message and a code, never a traceback or a path on the server's disk: messages of
edgebridge's own errors have absolute paths replaced, anything else is "internal error" (and is
logged on the server's stderr with its traceback).
"""

from __future__ import annotations

import re
from typing import Any

from edgebridge.errors import AudioInputError, ContextOverflowError, EdgebridgeError, ImageInputError, InputError

_PATH = re.compile(r"(?<![\w.])/[^\s'\"/]+(?:/[^\s'\"/]*)*")  # "/tmp/a b" -> "<path> b"; "a / b" kept


class ApiError(Exception):
    """What a request gets back when it cannot be answered."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def scrub(message: str) -> str:
    """``message`` with absolute paths replaced by ``<path>``."""
    return _PATH.sub("<path>", message)


def from_edgebridge(exc: EdgebridgeError) -> ApiError:
    """The status a library error earns: the client's input (400/422), or the server (500)."""
    text = scrub(f"{exc.message} {exc.hint}" if exc.hint else exc.message)
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, text, code="context_length_exceeded", param="messages")
    if isinstance(exc, (ImageInputError, AudioInputError)):
        return ApiError(422, text, code="invalid_media", param="messages")
    if isinstance(exc, InputError):
        return ApiError(400, text, code="invalid_input")
    return ApiError(500, "the model failed to answer this request.", code="server_error", type="server_error")


def internal() -> ApiError:
    return ApiError(500, "internal error.", code="internal_error", type="server_error")
