"""The routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

Rules (also in ``ARCHITECTURE.md``): bound to 127.0.0.1 unless told otherwise; with an API key every
route but ``/health`` wants ``Authorization: Bearer KEY`` (compared in constant time); errors are
OpenAI-style JSON, never a traceback or a server path; bodies over ``max_body_bytes`` get 413 before
they are read in full; the bundle loads on a background thread, and until it has, ``/health`` and
chat requests answer 503.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgebridge.errors import EdgebridgeError
from edgebridge.plan import render_messages
from edgebridge.server.errors import ApiError, from_edgebridge, internal
from edgebridge.server.metrics import Metrics
from edgebridge.server.protocol import ChatRequest, Limits, parse_chat
from edgebridge.server.slots import Job, Slots

log = logging.getLogger("edgebridge.server")


@dataclass(frozen=True)
class ServeOptions:
    bundle: Path
    parallel: int = 1
    max_queue: int = 8
    timeout_s: float = 300.0
    api_key: str | None = None
    max_body_bytes: int = 32 << 20
    limits: Limits = field(default_factory=Limits)
    pipeline: dict[str, Any] = field(default_factory=dict)  # Pipeline.from_bundle keywords
    model_id: str | None = None


class ServerState:
    """What the app holds: the options, the metrics, and (once loaded) the slots."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self.model_id = options.model_id or Path(options.bundle).name
        self.slots: Slots | None = None
        self.placeholders: dict[str, str] = {}
        self.failure: str | None = None
        self.draining = False

    def load(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open ``parallel`` pipelines (threads split between them), then hand them to the loop."""
        from edgebridge.pipeline import Pipeline

        try:
            kwargs = dict(self.options.pipeline)
            pipes = [Pipeline.from_bundle(self.options.bundle, **kwargs) for _ in range(self.options.parallel)]
        except EdgebridgeError as exc:
            self.failure = from_edgebridge(exc).message
            log.error("could not load the bundle: %s", exc)
            return
        except Exception:  # /health must say "failed", not "loading" forever
            self.failure = "the bundle could not be loaded; see the server's log."
            log.exception("could not load the bundle")
            return
        if not pipes[0].manifest.prompt.chat_template:
            self.failure = "the bundle has no chat template; the chat API needs one."
            return
        self.placeholders = {m: spec.placeholder for m, spec in pipes[0].manifest.inputs.items() if spec.placeholder}
        loop.call_soon_threadsafe(self._ready, pipes)

    def _ready(self, pipes: list[Any]) -> None:
        self.slots = Slots(pipes, self.options.max_queue)

    def check_ready(self) -> Slots:
        if self.draining:
            raise ApiError(503, "the server is shutting down.", code="shutting_down", type="server_error")
        if self.slots is None:
            why = self.failure or "the model is still loading."
            raise ApiError(503, why, code="not_ready", type="server_error", headers={"Retry-After": "2"})
        return self.slots

    def close(self) -> None:
        self.draining = True
        for pipe in self.slots.pipelines if self.slots else []:
            pipe.close()  # waits for a call that runs


def create_app(options: ServeOptions) -> Starlette:
    state = ServerState(options)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        loop = asyncio.get_running_loop()
        threading.Thread(target=state.load, args=(loop,), name="edgebridge-load", daemon=True).start()
        yield
        await asyncio.to_thread(state.close)

    routes = [Route("/v1/chat/completions", guarded(state, chat_completions), methods=["POST"]),
              Route("/v1/models", guarded(state, models), methods=["GET"]),
              Route("/metrics", guarded(state, metrics), methods=["GET"]),
              Route("/health", guarded(state, health, public=True), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = state
    return app


def serve(options: ServeOptions, host: str, port: int, grace_s: float = 30.0) -> None:
    """Run the app under uvicorn until SIGTERM / SIGINT; then drain (see ``DrainingServer``)."""
    app = create_app(options)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(grace_s))
    DrainingServer(config, app.state.server, grace_s).run()


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM / SIGINT the app answers 503 to new requests while those already running
    finish (at most ``grace_s``); then uvicorn shuts down. A second signal: at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState, grace_s: float) -> None:
        super().__init__(config)
        self.state, self.grace_s = state, grace_s

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.state.draining:
            return super().handle_exit(sig, frame)
        self.state.draining = True
        threading.Thread(target=self._drain, args=(sig, frame), daemon=True).start()

    def _drain(self, sig: int, frame: Any) -> None:
        deadline = time.monotonic() + self.grace_s
        slots = self.state.slots
        while slots is not None and (slots.busy or slots.waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
        super().handle_exit(sig, frame)


def guarded(state: ServerState, handler, public: bool = False):
    """``handler`` behind the API key, with every outcome counted and every error as OpenAI JSON."""
    route = handler.__name__

    async def endpoint(request: Request) -> Response:
        try:
            if not public:
                check_key(state.options.api_key, request)
            response = await handler(state, request)
        except ApiError as exc:
            response = error_response(state, exc)
        except Exception:
            log.exception("request failed")
            response = error_response(state, internal())
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    endpoint.__name__ = route
    return endpoint


def error_response(state: ServerState, exc: ApiError) -> JSONResponse:
    state.metrics.errors.labels(exc.code).inc()
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def check_key(key: str | None, request: Request) -> None:
    if key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(401, "a valid API key is required (Authorization: Bearer <key>).", code="invalid_api_key",
                       type="authentication_error")


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON; 413 once it passes ``limit`` bytes (read no further), 400 when it is not JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is larger than {limit >> 20} MiB.", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit >> 20} MiB.", code="body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON.", code="invalid_json") from None


# --- routes --------------------------------------------------------------------------------------


async def health(state: ServerState, request: Request) -> Response:
    if state.slots is None or state.draining:
        status = "failed" if state.failure else ("shutting_down" if state.draining else "loading")
        return JSONResponse({"status": status}, status_code=503)
    return JSONResponse({"status": "ok", "model": state.model_id, "parallel": len(state.slots.pipelines),
                         "busy": state.slots.busy, "queued": state.slots.waiting})


async def models(state: ServerState, request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": state.model_id, "object": "model", "created": 0,
                                                     "owned_by": "edgebridge"}]})


async def metrics(state: ServerState, request: Request) -> Response:
    if state.slots is not None:
        state.metrics.queue_depth.set(state.slots.waiting)
        state.metrics.busy.set(state.slots.busy)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def chat_completions(state: ServerState, request: Request) -> Response:
    slots = state.check_ready()
    chat = parse_chat(await read_json(request, state.options.max_body_bytes), state.placeholders,
                      state.model_id, state.options.limits)
    pipe = await slots.take()
    job = Job(lambda: generate(pipe, chat), deadline=time.monotonic() + state.options.timeout_s)
    job.start(asyncio.get_running_loop(), on_end=lambda: slots.give_back(pipe))
    reply = Reply(state.model_id)
    if chat.stream:
        return StreamingResponse(stream_events(state, job, reply), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        while (event := await job.events.get())[0] == "piece":
            pass
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    kind, value = event
    if kind == "error":
        raise value
    state.metrics.observe_result(value)
    return JSONResponse(reply.completion(value))


def generate(pipe: Any, chat: ChatRequest):
    """Runs on the job's thread: the conversation through the bundle's chat template, then a stream."""
    prompt = render_messages(chat.messages, pipe.manifest.prompt, pipe.manifest.inputs)
    return pipe.generate(prompt, images=chat.media.get("image") or None, audio=chat.media.get("audio") or None,
                         config=chat.config, stream=True)


async def stream_events(state: ServerState, job: Job, reply: "Reply"):
    """Server-sent events in OpenAI's chunk format; a client that leaves cancels the job."""
    try:
        yield reply.sse(reply.chunk({"role": "assistant", "content": ""}))
        while True:
            kind, value = await job.events.get()
            if kind == "piece":
                yield reply.sse(reply.chunk({"content": value}))
                continue
            if kind == "error":
                state.metrics.errors.labels(value.code).inc()  # the status line (200) was sent already
                yield reply.sse(value.body())
            else:
                state.metrics.observe_result(value)
                yield reply.sse(reply.chunk({}, finish_reason=reply.finish(value)))
                yield reply.sse({**reply.chunk_base(), "choices": [], "usage": reply.usage(value)})
            yield "data: [DONE]\n\n"
            return
    finally:
        job.cancelled.set()  # a no-op when it ended; when the client left, the worker stops after this piece


class Reply:
    """OpenAI's response objects for one request (one id, one creation time)."""

    def __init__(self, model_id: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id

    @staticmethod
    def finish(result) -> str:
        return "length" if result.finish_reason in ("length", "context") else "stop"

    @staticmethod
    def usage(result) -> dict[str, int]:
        n = len(result.token_ids)
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n, "total_tokens": result.prompt_tokens + n}

    def chunk_base(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        return {**self.chunk_base(), "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    @staticmethod
    def sse(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    def completion(self, result) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": self.finish(result)}],
                "usage": self.usage(result)}
