"""The server's request checks and error scrubbing, without a server (fast)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from edgebridge.errors import ContextOverflowError, ImageInputError, ManifestError
from edgebridge.server.errors import ApiError, from_edgebridge, scrub
from edgebridge.server.protocol import Limits, parse_chat

PH = {"image": "<image>"}


def png_uri(size=(8, 6)) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_media_parts_become_placeholders_in_order():
    body = {"messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "A "},
                                                      {"type": "image_url", "image_url": {"url": png_uri()}},
                                                      {"type": "text", "text": " and "},
                                                      {"type": "image_url", "image_url": png_uri((3, 3))}]}],
            "temperature": 0.5, "seed": 3, "stop": "END", "max_tokens": 7}
    chat = parse_chat(body, PH, "m", Limits())
    assert chat.messages == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "A <image> and <image>"}]
    assert len(chat.media["image"]) == 2 and Image.open(io.BytesIO(chat.media["image"][1])).size == (3, 3)
    c = chat.config
    assert (c.temperature, c.seed, c.stop, c.max_new_tokens, c.stop_at_eos) == (0.5, 3, ("END",), 7, True)
    assert parse_chat({"messages": [{"role": "user", "content": "hi"}]}, PH, "m", Limits()).config.greedy


@pytest.mark.parametrize("body,status,code", [
    ({"messages": [{"role": "user", "content": "hi"}], "model": "other"}, 404, "model_not_found"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "unsupported_value"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     400, "remote_url_refused"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_uri((400, 300))}}]}]},
     413, "image_too_large"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_k": 2.5}, 400, "invalid_request"),
])
def test_refusals_carry_status_and_code(body, status, code):
    with pytest.raises(ApiError) as info:
        parse_chat(body, PH, "m", Limits(max_image_pixels=100_000))
    assert (info.value.status, info.value.code) == (status, code)
    assert set(info.value.body()["error"]) == {"message", "type", "code", "param"}


def test_errors_lose_their_paths():
    assert scrub("image '/tmp/x/cat.png' is corrupt; see /work/a.b") == "image '<path>' is corrupt; see <path>"
    assert scrub("8/16-bit PCM, data:image/png and a / b") == "8/16-bit PCM, data:image/png and a / b"
    assert from_edgebridge(ImageInputError("image '/srv/a.png' bad")).status == 422
    assert from_edgebridge(ContextOverflowError("too long")).code == "context_length_exceeded"
    server_side = from_edgebridge(ManifestError("bundle '/srv/b' broken"))
    assert server_side.status == 500 and "/srv" not in server_side.message
