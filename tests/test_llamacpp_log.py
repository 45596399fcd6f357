"""llama.cpp's log goes to a ring buffer and to every active ``captured_log()`` (the real library's sink)."""

from __future__ import annotations

from edgebridge.runtimes.llamacpp import _lib


def test_nested_log_captures_each_keep_their_own_lines():
    """A capture around a model load nests the load's own capture; the inner one, ending with the same
    lines as the outer, must not take the outer's place (it did: list.remove compares by value)."""
    _lib.llama()
    sink = _lib._state["log_sink"]  # the ctypes callback llama.cpp calls
    with _lib.captured_log() as outer:
        with _lib.captured_log() as inner:
            sink(2, b"both\n", None)
        sink(2, b"outer only\n", None)
    assert inner == ["both\n"] and outer == ["both\n", "outer only\n"]
    assert not any(c is outer or c is inner for c in _lib._CAPTURES)
