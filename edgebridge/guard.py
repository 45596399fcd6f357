"""One call at a time on a pipeline, and nothing after it is closed.

A pipeline owns one llama.cpp context (one KV cache, one position counter) and engine sessions;
two calls interleaving on them would mix their state (llama.cpp aborts on inconsistent positions,
or answers with another call's cache). ``CallGuard`` serializes calls: a second thread waits until
the first call (or stream) is done. A call from the thread that already holds the pipeline (a
stream left open, then a new call) cannot wait for itself: it gets ``PipelineBusyError``. After
``close()`` every call gets ``PipelineClosedError``; a close asked for while a call runs waits for
it (or, from inside it, happens when it ends).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from edgebridge.errors import InputError


class PipelineClosedError(InputError):
    """The pipeline was closed; its engines are gone."""


class PipelineBusyError(InputError):
    """This thread is still inside a call (an open stream) of the same pipeline."""


class CallGuard:
    def __init__(self, release: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._closed = self._close_pending = False
        self._release = release

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Hold the pipeline for one call (waiting for another thread's call to end)."""
        me = threading.get_ident()
        if self._owner == me:
            raise PipelineBusyError("this thread still has a call or stream of this pipeline open.",
                                    hint="Finish iterating the stream (or close it) before the next call.")
        self._check_open()
        with self._lock:
            self._check_open()
            self._owner = me
            try:
                yield
            finally:
                self._owner = None
                if self._close_pending:
                    self._shut()

    def close(self) -> None:
        """Release the engines once no call runs (from inside a call: when it ends)."""
        if self._closed:
            return
        if self._owner == threading.get_ident():
            self._close_pending = True
            return
        with self._lock:
            self._shut()

    def _shut(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise PipelineClosedError("this pipeline was closed.", hint="Open the bundle again with Pipeline.from_bundle.")

    @property
    def closed(self) -> bool:
        return self._closed
