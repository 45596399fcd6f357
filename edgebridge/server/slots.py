"""The pipelines a server answers with, and the bounded queue in front of them.

Each pipeline answers one request at a time (it owns one KV cache), so ``--parallel N`` opens N
pipelines that share nothing mutable. A request takes a free one or waits in a queue of at most
``max_queue``; beyond that it gets 429 at once. A generation runs on its own worker thread and
checks, after every text piece, whether its client left or its time is up: the pipeline goes back
to the free list from that thread when the generation has really stopped, never before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from edgebridge.errors import EdgebridgeError
from edgebridge.server.errors import ApiError, from_edgebridge, internal

log = logging.getLogger("edgebridge.server")


class Slots:
    def __init__(self, pipelines: list[Any], max_queue: int) -> None:
        self.pipelines = pipelines
        self.max_queue = max_queue
        self.waiting = 0
        self._free: asyncio.Queue[Any] = asyncio.Queue()
        for pipe in pipelines:
            self._free.put_nowait(pipe)

    async def take(self) -> Any:
        """A free pipeline (waiting in the queue for one), or 429 when the queue is full."""
        if self._free.empty() and self.waiting >= self.max_queue:
            raise ApiError(429, "the server is busy; try again shortly.", code="queue_full",
                           type="rate_limit_error", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            return await self._free.get()
        finally:
            self.waiting -= 1

    def give_back(self, pipe: Any) -> None:
        self._free.put_nowait(pipe)

    @property
    def busy(self) -> int:
        return len(self.pipelines) - self._free.qsize()


@dataclass
class Job:
    """One request's generation on a worker thread; events arrive on ``events`` in order:
    ("piece", str)..., then ("done", GenerationResult) or ("error", ApiError)."""

    generate: Callable[[], Any]  # returns a GenerationStream
    deadline: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def start(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[], None]) -> None:
        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

        def work() -> None:
            outcome: tuple[str, Any] = ("error", internal())
            try:
                outcome = self._run(put)
            finally:
                def finish() -> None:  # one loop callback: the pipeline is free before anyone hears the outcome
                    on_end()
                    self.events.put_nowait(outcome)

                loop.call_soon_threadsafe(finish)

        threading.Thread(target=work, name="edgebridge-generate", daemon=True).start()

    def _run(self, put: Callable[[str, Any], None]) -> tuple[str, Any]:
        try:
            stream = self.generate()
            pieces = iter(stream)
            try:
                for piece in pieces:
                    put("piece", piece)
                    if self.cancelled.is_set():
                        return "error", ApiError(499, "the client went away.", code="cancelled")
                    if time.monotonic() > self.deadline:
                        return "error", ApiError(503, "the request ran past the server's time limit.",
                                                 code="timeout", type="server_error")
            finally:
                pieces.close()  # ends the generation (and frees the pipeline's call guard) on this thread
            return "done", stream.result
        except EdgebridgeError as exc:
            return "error", from_edgebridge(exc)
        except Exception:
            log.exception("generation failed")
            return "error", internal()
