"""Hostile use, class by class (the outside tester's report): each test names the class it covers.

Process deaths are tested in a fresh interpreter (``run_isolated``), so a crash fails the test instead
of taking the suite down.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgebridge.errors import EdgebridgeError, ExportError, IntegrityError, NonFiniteError
from tests.conftest import PROMPT, copy_bundle, run_cli, run_isolated

pytestmark = pytest.mark.slow

CONCURRENT = r"""
import sys, threading, numpy as np
from skimage import data
from edgebridge import Pipeline
from edgebridge.runtimes.llamacpp import LlamaSettings
prompts = ["USER: <image>\nWhat is in this image? ASSISTANT:", "USER: <image>\nDescribe it. ASSISTANT:",
           "USER: <image>\nColours? ASSISTANT:", "Hello there, how"]
images = [[data.chelsea()], [data.coffee()], [data.astronaut()], []]
with Pipeline.from_bundle(sys.argv[1], llm_settings=LlamaSettings.strict()) as pipe:
    expected = [pipe.generate(p, images=i, max_new_tokens=6).token_ids for p, i in zip(prompts, images)]
    got, errors = {}, []
    def worker(k):
        try:
            for n in range(10):
                r = pipe.generate(prompts[k], images=images[k], max_new_tokens=6)
                got[(k, n)] = r.token_ids
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
bad = [key for key, ids in got.items() if ids != expected[key[0]]]
print("calls", len(got), "errors", errors, "mismatches", bad)
sys.exit(0 if len(got) == 40 and not errors and not bad else 3)
"""


def test_concurrent_calls_on_one_pipeline_are_serialized(clip_llama_f32):
    """Class 1 (concurrency): 4 threads x 10 calls on one pipeline give the sequential answers, no crash."""
    proc = run_isolated(CONCURRENT, str(clip_llama_f32.bundle), timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "calls 40 errors [] mismatches []" in proc.stdout


AFTER_CLOSE = r"""
import sys
from edgebridge import Pipeline
from edgebridge.guard import PipelineBusyError, PipelineClosedError
with Pipeline.from_bundle(sys.argv[1]) as pipe:
    pipe.generate("hello", max_new_tokens=2)
    pieces = iter(pipe.generate("hello", max_new_tokens=4, stream=True))
    next(pieces)  # a stream left open ...
    try:
        pipe.generate("again", max_new_tokens=2)  # ... and a new call from the same thread
        sys.exit(4)
    except PipelineBusyError as exc:
        print("busy:", exc.message)
    pieces = None  # dropping the stream releases the pipeline
    print("after drop:", len(pipe.generate("again", max_new_tokens=2).token_ids))
for call in (lambda: pipe.generate("hello", max_new_tokens=2), lambda: pipe.prefill_logits("hello")):
    try:
        call()
        sys.exit(5)
    except PipelineClosedError as exc:
        print("closed:", exc.message)
pipe.close()  # closing twice is fine
"""


def test_calls_after_close_and_from_an_open_stream_are_refused(clip_llama_f32):
    """Class 2 (use after close): a clear error, not SIGSEGV; a call while this thread's stream is open too."""
    proc = run_isolated(AFTER_CLOSE, str(clip_llama_f32.bundle))
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.count("closed: this pipeline was closed.") == 2
    assert "busy: this thread still has a call or stream" in proc.stdout and "after drop: 2" in proc.stdout


def test_non_finite_drift_budgets_are_refused(clip_llama_f32, tmp_path):
    """Class 6 (NaN passes gates): a NaN or infinite bound would let every gate pass."""
    from edgebridge.exporters.api import export_bundle
    from edgebridge.exporters.quantize import parse_budget

    for value in ("nan", "inf", "-inf"):
        with pytest.raises(ExportError, match="not a finite number"):
            parse_budget([f"encoder.cosine_min={value}"])
    with pytest.raises(ExportError, match="not a finite number"):
        export_bundle(clip_llama_f32.model_dir, tmp_path / "b", max_drift={"encoder": {"cosine_min": float("nan")},
                                                                          "llm": {}})
    proc = run_cli("export", str(clip_llama_f32.model_dir), "-o", str(tmp_path / "c"), "--max-drift",
                   "llm.kl_mean=nan")
    assert proc.returncode == 2 and "not a finite number" in proc.stderr and not (tmp_path / "c").exists()


def _poison_token_embeddings(bundle: Path, token: int | None = None) -> None:
    """Write NaN over the f32 GGUF's token embeddings (one ``token``'s row, else all) and re-record its hash
    (a bundle that verifies)."""
    import gguf

    from edgebridge.bundle import sha256_file

    path = bundle / "llm.gguf"
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight")
    width = int(tensor.shape[0])  # gguf-py gives ne: the row length first
    rows = (token, 1) if token is not None else (0, int(tensor.n_elements) // width)
    with open(path, "r+b") as fh:
        fh.seek(int(tensor.data_offset) + rows[0] * width * 4)
        fh.write(np.full(rows[1] * width, np.nan, np.float32).tobytes())
    manifest = json.loads((bundle / "edgebridge.json").read_text())
    manifest["files"]["llm.gguf"]["sha256"] = sha256_file(path)
    (bundle / "edgebridge.json").write_text(json.dumps(manifest))


def test_nan_in_the_llm_is_an_error_not_token_zero(clip_llama_f32, tmp_path):
    """Class 6 (NaN passes gates): NaN embeddings in the GGUF used to give token 0 forever, exit 0."""
    from edgebridge import Pipeline

    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "nan")
    _poison_token_embeddings(bundle)
    with Pipeline.from_bundle(bundle) as pipe, pytest.raises(NonFiniteError, match="NaN or Inf logits"):
        pipe.generate("hello there", max_new_tokens=4)
    proc = run_cli("run", str(bundle), "-p", "hello there", "-n", "4", "--json")
    assert proc.returncode == 2 and "NaN or Inf logits" in proc.stderr and proc.stdout == ""


def test_after_nan_logits_the_next_prompt_attends_to_no_leftover(clip_llama_f32, tmp_path):
    """A fresh prompt clears only the KV cells' metadata (zeroing the tensors cost 0.75 ms a call); the
    cells left over are masked, but a masked NaN still spreads (0 x NaN). So after a call that gave NaN
    logits (one token's embedding row broken) the next one zeroes them: a shorter prompt without that
    token answers as on an intact bundle."""
    from edgebridge import Pipeline
    from edgebridge.runtimes.llamacpp import LlamaSettings

    long, short = "USER: tell me about zebras and their stripes please ASSISTANT:", "USER: hi ASSISTANT:"
    strict = LlamaSettings.strict()
    with Pipeline.from_bundle(clip_llama_f32.bundle, llm_settings=strict) as intact:
        want = intact.generate(short, max_new_tokens=8).token_ids
        harmless = set(intact.llm.tokenize(short)) | set(want)
        broken = next(t for t in intact.llm.tokenize(long)[3:] if t not in harmless)
    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "nan-row")
    _poison_token_embeddings(bundle, broken)
    with Pipeline.from_bundle(bundle, llm_settings=strict) as pipe:
        with pytest.raises(NonFiniteError, match="NaN or Inf logits"):
            pipe.generate(long, max_new_tokens=2)
        assert pipe.generate(short, max_new_tokens=8).token_ids == want


def test_links_out_of_the_bundle_are_refused(clip_llama_f32, tmp_path):
    """Class 8 (symlinks): a link to an identical file outside the bundle passes the hash, but is refused;
    the message says nothing about the outside file."""
    from edgebridge import Pipeline
    from edgebridge.bundle import Bundle

    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "linked")
    outside = tmp_path / "elsewhere" / "vision_encoder.onnx"
    outside.parent.mkdir()
    shutil.move(bundle / "vision_encoder.onnx", outside)
    (bundle / "vision_encoder.onnx").symlink_to(outside)
    with pytest.raises(IntegrityError, match="link that leads outside the bundle") as info:
        Bundle.open(bundle)
    assert "elsewhere" not in info.value.message and str(outside.stat().st_size) not in info.value.message
    with pytest.raises(IntegrityError):
        Pipeline.from_bundle(bundle, verify=False)  # loading without hashing does not follow it either
    (bundle / "vision_encoder.onnx").unlink()
    (bundle / "vision_encoder.onnx").symlink_to(bundle / "vision_encoder.onnx")  # a loop
    with pytest.raises(EdgebridgeError):
        Bundle.open(bundle)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """Class 7 (silent input mangling): a 16-bit PNG came out almost all white; now scaled, and said."""
    from PIL import Image

    from edgebridge.preprocess.image import load_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    got = np.asarray(img)[..., 0].astype(int)
    assert np.abs(got - np.round(ramp / 257.0)).max() <= 1 and (got < 128).mean() > 0.45  # not clipped to 255
    assert img.info["converted"] == "a 16-bit image scaled to 8 bits per channel"


def test_16_bit_image_conversion_reaches_the_warnings(clip_llama_f32, tmp_path):
    from PIL import Image

    from edgebridge import Pipeline

    path = tmp_path / "deep.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(path)
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        result = pipe.generate(PROMPT, images=[path], max_new_tokens=1)
    assert any("16-bit image scaled to 8 bits" in w for w in result.call_warnings), result.call_warnings


def test_channels_first_audio_arrays_are_read_as_channels():
    """Class 7: a [channels, samples] array used to be read as a 2-sample clip."""
    from edgebridge.errors import AudioInputError
    from edgebridge.preprocess.audio import load_audio

    wave = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    first = load_audio(np.stack([wave, wave]), 16000)  # [2, 16000]
    last = load_audio(np.stack([wave, wave], axis=1), 16000)  # [16000, 2]
    assert first.samples.shape == last.samples.shape == (16000,)
    np.testing.assert_allclose(first.samples, last.samples)
    with pytest.raises(AudioInputError, match="no axis of at most"):
        load_audio(np.zeros((100, 200), np.float32), 16000)


def _rewrite_gguf_field(src: Path, dst: Path, key: str, value: float) -> None:
    """A copy of ``src`` with one float hyperparameter changed (gguf-py's own writer)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == key:
            writer.add_float32(key, value)
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(d) for d in t.shape])),
                          raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_out_of_range_gguf_hyperparameters_are_refused_before_llama_cpp(clip_llama_f32, tmp_path):
    """Class 4 (native asserts): a negative RMS epsilon aborted in GGML_ASSERT, its backtrace on stdout."""
    from edgebridge.bundle import sha256_file
    from edgebridge.errors import CorruptArtifactError
    from edgebridge.runtimes.llamacpp.gguf_check import read_gguf_info

    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "eps")
    gguf_path = bundle / "llm.gguf"
    _rewrite_gguf_field(clip_llama_f32.bundle / "llm.gguf", gguf_path, "llama.attention.layer_norm_rms_epsilon", -1.0)
    with pytest.raises(CorruptArtifactError, match="layer_norm_rms_epsilon = -1.0"):
        read_gguf_info(gguf_path)
    manifest = json.loads((bundle / "edgebridge.json").read_text())
    manifest["files"]["llm.gguf"] = {"sha256": sha256_file(gguf_path), "bytes": gguf_path.stat().st_size}
    (bundle / "edgebridge.json").write_text(json.dumps(manifest))
    proc = run_cli("run", str(bundle), "-p", "hello", "-n", "2", "--json")
    assert proc.returncode == 2 and "cannot run" in proc.stderr and proc.stdout == "", proc.stderr[-1500:]


@pytest.mark.parametrize("tokens", [0, -3, 65])
def test_manifest_token_counts_are_checked_against_the_graph(clip_llama_f32, tmp_path, tokens):
    """Class 5 (manifest claims): a tampered tokens_per_item used to drop or cut the image silently."""
    from edgebridge import Pipeline
    from edgebridge.errors import ManifestError

    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / f"t{tokens}")
    manifest = json.loads((bundle / "edgebridge.json").read_text())
    manifest["inputs"]["image"]["tokens_per_item"] = tokens
    (bundle / "edgebridge.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="tokens_per_item|embeddings"):
        Pipeline.from_bundle(bundle)


def test_manifest_output_shape_is_checked_against_the_graph(clip_llama_f32, tmp_path):
    from edgebridge import Pipeline
    from edgebridge.errors import ManifestError

    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "shape")
    manifest = json.loads((bundle / "edgebridge.json").read_text())
    manifest["components"]["vision_encoder"]["outputs"][0]["shape"][1] = 32  # the graph gives 64
    (bundle / "edgebridge.json").write_text(json.dumps(manifest))
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(ManifestError, match="the manifest says"):
            Pipeline.from_bundle(bundle, encoder_backend=backend)


# --- the "ugly" list: one clean error each (exit 2, message + hint, no traceback, nothing on stdout) --------


def test_api_argument_mistakes_are_clear_errors(clip_llama_f32, tmp_path):
    import os

    from edgebridge import Pipeline
    from edgebridge.errors import ImageInputError, InputError, PromptError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with Pipeline.from_bundle(clip_llama_f32.bundle, n_ctx=8192) as pipe:
        assert any("beyond the" in w for w in pipe.load_warnings)  # n_ctx past the trained context: said
        with pytest.raises(PromptError, match="placeholder"):
            pipe.generate("USER: <image>\nWhat? ASSISTANT:")  # a placeholder with no media (was KeyError)
        with pytest.raises(InputError, match="prompt must be a string"):
            pipe.generate(None)
        with pytest.raises(InputError, match="not valid Unicode"):
            pipe.generate("caf\udce9")
        with pytest.raises(InputError, match="list of items"):
            pipe.generate("<image>", images="cat.png")
        with pytest.raises(InputError, match="list of items"):
            pipe.generate("<image>", images=5)
        with pytest.raises(InputError, match="max_new_tokens"):
            pipe.generate("hi", max_new_tokens="3")
        for path, message in ((tmp_path, "is a folder"), (fifo, "not a regular file"),
                              (Path("/dev/zero"), "not a regular file"), (loop, "cannot be read")):
            with pytest.raises(ImageInputError, match=message):
                pipe.generate("<image>", images=[path], max_new_tokens=1)
    for kwargs in ({"precision": "bogus"}, {"threads": -3}, {"encoder_backend": "bogus"}, {"device": "TPU"}):
        with pytest.raises(EdgebridgeError):
            Pipeline.from_bundle(clip_llama_f32.bundle, **kwargs)


def test_cli_mistakes_exit_2_with_a_message(clip_llama_f32, tmp_path):
    bundle = str(clip_llama_f32.bundle)
    a_file = tmp_path / "report.txt"
    a_file.write_text("x")
    cases = [
        (["run", bundle, "-p", "hi", "--precision", "bogus"], "unknown execution precision"),
        (["run", bundle, "-p", "hi", "--threads", "-3"], "threads must be"),
        (["run", bundle, "-i", str(tmp_path / "[bold]cat[/bold].png")], "[bold]cat[/bold].png"),  # printed as is
        (["profile", bundle, "-o", str(tmp_path / "p"), "--backend", "bogus", "--runs", "1"], "unknown encoder backend"),
        (["profile", bundle, "-o", str(tmp_path / "p"), "--baseline", "bogus", "--model-dir", bundle], "unknown baseline"),
        (["profile", bundle, "-o", str(a_file), "-p", "hi", "--runs", "1", "--warmup", "0", "-n", "1"], "is a file"),
    ]
    for args, needle in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr[-800:])
        assert needle in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == "", (args, proc.stderr)


def test_broken_inputs_at_export_and_in_preprocessing_settings(clip_llama_f32, tmp_path):
    from edgebridge import Pipeline
    from edgebridge.errors import ManifestError

    model = Path(shutil.copytree(clip_llama_f32.model_dir, tmp_path / "model"))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    proc = run_cli("export", str(model), "-o", str(tmp_path / "b"))
    assert proc.returncode == 2 and "could not load" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-800:]
    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "pre")
    manifest = json.loads((bundle / "edgebridge.json").read_text())
    manifest["inputs"]["image"]["preprocessing"]["mean"] = "bright"
    (bundle / "edgebridge.json").write_text(json.dumps(manifest))
    with Pipeline.from_bundle(bundle) as pipe, pytest.raises(ManifestError, match="preprocessing settings"):
        pipe.generate("<image>", images=[np.zeros((32, 32, 3), np.uint8)], max_new_tokens=1)


@pytest.mark.parametrize("rate", [1, 3, 5_000_000])
def test_wavs_with_absurd_sample_rates_are_refused_before_any_work(tmp_path, rate):
    """Ugly list: such WAVs tried to allocate tens of GiB while resampling."""
    from edgebridge.errors import AudioInputError
    from edgebridge.preprocess.audio import load_audio, wav_bytes

    path = tmp_path / f"r{rate}.wav"
    path.write_bytes(wav_bytes(np.zeros(48_000, np.float32), rate))
    with pytest.raises(AudioInputError, match="sample rate"):
        load_audio(path, 16000)


@pytest.mark.parametrize("path", ["components.vision_encoder.outputs", "components.llm.artifacts.gguf.files",
                                  "components.vision_encoder.inputs"])
def test_empty_manifest_lists_name_their_key(clip_llama_f32, path):
    """Ugly list: an empty list in the manifest gave an IndexError traceback."""
    from edgebridge.errors import ManifestError
    from edgebridge.manifest import Manifest

    data = json.loads((clip_llama_f32.bundle / "edgebridge.json").read_text())
    node = data
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = []
    with pytest.raises(ManifestError, match=path.replace(".", r"\.")):
        Manifest.from_dict(data)


def test_native_writes_to_stdout_go_to_stderr_in_the_cli():
    """Class 4: an abort's backtrace on fd 1 broke --json; the CLI keeps fd 1 for its own output."""
    code = ("import os\nfrom edgebridge.cli import _stdout_for_us\nwith _stdout_for_us():\n"
            "    os.write(1, b'native chatter\\n')\n    print('{\"ours\": 1}')\nprint('after')\n")
    proc = run_isolated(code)
    assert proc.returncode == 0 and proc.stdout == '{"ours": 1}\nafter\n' and "native chatter" in proc.stderr


def test_a_reader_that_leaves_gets_no_traceback():
    """`edgebridge profile --help | head -20`: head leaves while we still write. It printed two
    BrokenPipeError tracebacks in 4 of 5 runs before; 5 runs, none may now."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "edgebridge"
    for _ in range(5):
        proc = subprocess.run(["sh", "-c", f"'{exe}' profile --help | head -20 > /dev/null"], capture_output=True,
                              text=True, timeout=120)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr[-800:]
