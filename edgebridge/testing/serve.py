"""Start ``edgebridge serve`` on a free loopback port (tests, benchmarks), and stop it (SIGTERM) after."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, key: str | None) -> None:
        self.url, self.proc, self.key = url, proc, key

    def request(self, method: str, path: str, body: bytes | dict | None = None, *, key: str | None = "default",
                headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in req.headers:
            req.add_header("Content-Type", "application/json")
        key = self.key if key == "default" else key
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


    def open_stream(self, body: dict[str, Any], chunks: int = 3) -> tuple[socket.socket, bytes]:
        """POST a streamed ``body`` on a raw socket and read until ``chunks`` chunks arrived: the test
        then holds the connection (to hang up, or to read the rest)."""
        host, port = self.url.rsplit("/", 1)[1].split(":")
        sock = socket.create_connection((host, int(port)), timeout=120)
        payload = json.dumps(body).encode()
        auth = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"{auth}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while received.count(b"chat.completion.chunk") < chunks:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError(f"the stream ended early: {received[-300:]!r}")
            received += piece
        return sock, received

    def declared_oversize(self, n_bytes: int) -> tuple[int, bytes]:
        """A POST that declares an ``n_bytes`` body and sends its first 64 KiB: the server must answer
        from the header, without reading (or waiting for) the rest."""
        host, port = self.url.rsplit("/", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            auth = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"{auth}Content-Length: {n_bytes}\r\n\r\n".encode() + b"x" * 65536)
            reply = b""
            while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
                piece = sock.recv(65536)
                if not piece:
                    break
                reply += piece
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@contextmanager
def serving(bundle: Path, *args: str, key: str | None = None, ready_s: float = 180) -> Iterator[Server]:
    port = free_port()
    exe = Path(sys.executable).parent / "edgebridge"
    env = {**os.environ, "EDGEBRIDGE_API_KEY": key or ""}
    proc = subprocess.Popen([str(exe), "serve", str(bundle), "--port", str(port), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = Server(f"http://127.0.0.1:{port}", proc, key)
    try:
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.stderr.read()}")
            try:
                if server.request("GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("the server did not become ready")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def data_uri(image: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def image_message(text: str, uri: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": text}]}]
