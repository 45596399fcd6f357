"""Profiles: the JSON follows its schema, stages add up, warm-ups are excluded, baselines compare,
and the HTML report renders in a real browser (headless Chromium) without console errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field

import jsonschema
import pytest
from PIL import Image

from edgebridge.profiling import REPORT_SCHEMA, Profiler, stat
from edgebridge.profiling.html import render_html
from tests.conftest import ARTIFACTS, PROMPT, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class FakeResult:
    timings: dict
    devices: dict = field(default_factory=dict)
    token_ids: list = field(default_factory=lambda: [1, 2, 3])
    warnings: list = field(default_factory=list)


def _timings(ttft: float) -> dict:
    return {"preprocess_ms": 1.0, "encode_ms": 2.0, "prefill_ms": 3.0, "ttft_ms": ttft, "decode_ms": 5.0,
            "total_ms": ttft + 5.0, "per_token_ms": [1.0, 2.0], "decode_tokens_per_s": 100.0,
            "prefill_tokens_per_s": 1000.0, "prompt_tokens": 10, "new_tokens": 3}


def test_warmup_is_excluded_from_statistics():
    profiler = Profiler(warmup=2)
    assert not profiler.record(FakeResult(_timings(1000.0)), "app")
    assert not profiler.record(FakeResult(_timings(900.0)), "app")
    for ttft in (10.0, 12.0, 11.0):
        assert profiler.record(FakeResult(_timings(ttft)), "app")
    conf = profiler.report()["configurations"][0]
    assert conf["warmup_dropped"] == 2 and conf["runs"] == 3
    assert conf["stages"]["ttft_ms"]["samples"] == [10.0, 12.0, 11.0]
    assert conf["stages"]["ttft_ms"]["max"] == 12.0 and conf["stages"]["ttft_ms"]["p50"] == 11.0
    assert conf["stages"]["per_token_ms"]["n"] == 6


def test_embedded_profiler_times_application_stages(tmp_path):
    profiler = Profiler()
    with profiler.stage("postprocess", config="app"):
        sum(range(10000))
    profiler.record(FakeResult(_timings(10.0)), "app")
    paths = profiler.write(tmp_path)
    report = json.loads(paths["json"].read_text())
    jsonschema.validate(report, json.loads(REPORT_SCHEMA.read_text()))
    assert report["configurations"][0]["stages"]["postprocess_ms"]["n"] == 1
    assert "<svg" in paths["html"].read_text()


def test_stat_percentiles():
    s = stat([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert (s["p50"], s["p95"], s["mean"], s["min"], s["max"]) == (5.5, 9.55, 5.5, 1, 10)
    assert stat([])["n"] == 0


@pytest.fixture(scope="module")
def profile_report(clip_llama_f16, tmp_path_factory, photo):
    out = tmp_path_factory.mktemp("profile")
    image = out / "cat.png"
    Image.fromarray(photo).save(image)
    proc = run_cli("profile", str(clip_llama_f16.bundle), "-o", str(out / "report"), "--image", str(image),
                   "--prompt", PROMPT, "-n", "12", "--runs", "3", "--warmup", "1",
                   "--backend", "onnxruntime,openvino", "--device", "CPU,NPU",
                   "--baseline", "torch", "--baseline", "optimum-openvino", "--model-dir",
                   str(clip_llama_f16.model_dir), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "profile (p50" in proc.stdout
    return out / "report"



@pytest.mark.slow
def test_report_follows_the_schema(profile_report):
    report = json.loads((profile_report / "report.json").read_text())
    jsonschema.validate(report, json.loads(REPORT_SCHEMA.read_text()))
    names = [c["name"] for c in report["configurations"]]
    assert names == ["onnxruntime/CPU", "onnxruntime/NPU", "openvino/CPU", "openvino/NPU", "torch", "optimum-openvino"]
    assert all(c["status"] == "ok" for c in report["configurations"]), [c["error"] for c in report["configurations"]]
    env = report["environment"]
    assert env["cores_available"] >= 1 and env["libraries"]["onnxruntime"] and env["cpu_model"]
    assert report["memory_bandwidth"]["bytes_per_s"] > 1e8
    assert report["bundle"]["total_bytes"] == sum(report["bundle"]["files_bytes"].values())


@pytest.mark.slow
def test_stages_add_up_and_warmup_is_excluded(profile_report):
    report = json.loads((profile_report / "report.json").read_text())
    for conf in report["configurations"]:
        s = conf["stages"]
        assert conf["runs"] == 3 and conf["warmup_dropped"] == 1, conf["name"]
        assert s["ttft_ms"]["n"] == 3 and s["per_token_ms"]["n"] == 3 * 11  # 12 tokens: 11 decode steps a run
        for i in range(3):
            ttft, total = s["ttft_ms"]["samples"][i], s["total_ms"]["samples"][i]
            assert s["preprocess_ms"]["samples"][i] < ttft <= total
            if conf["kind"] == "edgebridge":
                inside = sum(s[k]["samples"][i] for k in ("preprocess_ms", "encode_ms", "bridge_ms", "prefill_ms"))
                assert inside <= ttft
                graph = s["encode_bridge_ms"]["samples"][i]
                assert abs(s["encode_ms"]["samples"][i] + s["bridge_ms"]["samples"][i] - graph) < 1e-3
                assert sum(conf_tok for conf_tok in s["per_token_ms"]["samples"][i * 11:(i + 1) * 11]) <= total
        if conf["kind"] == "edgebridge":
            assert 0 < conf["bridge_share"]["share"] < 1
            assert conf["decode_traffic"]["fraction_of_bandwidth"] > 0
            assert conf["peak_rss_bytes"] > 10_000_000


@pytest.mark.slow
def test_fallback_devices_and_baseline_ratios(profile_report):
    report = json.loads((profile_report / "report.json").read_text())
    by_name = {c["name"]: c for c in report["configurations"]}
    npu = by_name["onnxruntime/NPU"]["devices"]["vision_encoder"]
    assert npu["requested"] == "NPU" and npu["executed"] == "CPU" and npu["fallback_reason"]
    pairs = {(c["configuration"], c["baseline"]) for c in report["comparisons"]}
    assert ("onnxruntime/CPU", "torch") in pairs and ("openvino/CPU", "optimum-openvino") in pairs
    for comp in report["comparisons"]:
        assert {"encode_bridge_ms", "ttft_ms", "per_token_ms", "decode_tokens_per_s"} <= set(comp["ratios"])
    # the same greedy tokens from every system (the bundle is f16, all agree on this tiny model)
    tokens = {c["name"]: c["token_ids"] for c in report["configurations"]}
    assert tokens["torch"] == tokens["onnxruntime/CPU"] == tokens["optimum-openvino"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is installed by `make setup` (system-deps)")
def test_html_report_renders_in_headless_chromium(profile_report):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    html = profile_report / "report.html"
    assert "http://" not in html.read_text() and "https://" not in html.read_text()  # no network at view time
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        assert page.locator("#summary tbody tr").count() == 6
        assert page.locator("#stages-chart rect.seg").count() >= 6 * 3
        assert page.locator("#token-chart svg.token-hist").count() == 6
        assert page.locator("#ratio-chart rect").count() >= 4
        assert page.locator("#config-count").inner_text() == "6 of 6"  # the page's script ran
        page.screenshot(path=str(ARTIFACTS / "profile-report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (ARTIFACTS / "profile-report.png").stat().st_size > 10_000


def test_html_escapes_and_survives_failed_configurations():
    profiler = Profiler()
    conf = profiler.configuration("<script>alert(1)</script>")
    conf.status, conf.error = "error", "broke </script> here"
    html = render_html(profiler.report())
    assert "<script>alert(1)</script>" not in html
    assert "broke &lt;/script&gt; here" in html


def test_profile_without_host_packages_reports_baselines_unavailable(clip_llama_f16, tmp_path, photo):
    from tests.test_torch_free import BLOCKER, HOST_ONLY_MODULES

    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(HOST_ONLY_MODULES)))
    image = tmp_path / "cat.png"
    Image.fromarray(photo).save(image)
    proc = run_cli("profile", str(clip_llama_f16.bundle), "-o", str(tmp_path / "r"), "--image", str(image),
                   "-n", "4", "--runs", "1", "--warmup", "0", "--baseline", "torch", "--model-dir",
                   str(clip_llama_f16.model_dir), env={"PYTHONPATH": str(blocker)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    torch_conf = next(c for c in report["configurations"] if c["name"] == "torch")
    assert torch_conf["status"] == "unavailable" and "edgebridge[export]" in torch_conf["error"]
    assert report["configurations"][0]["status"] == "ok"


def test_baselines_get_the_placeholders_the_pipeline_adds(clip_llama_f32, photo):
    from edgebridge.profiling.runner import profile_bundle

    # no <image> in the prompt: the pipeline puts the image first; the HF processor must see the same text
    report = profile_bundle(clip_llama_f32.bundle, prompt="What is in this image?", images=[photo],
                            max_new_tokens=6, runs=1, warmup=0, baselines=["torch"],
                            model_dir=clip_llama_f32.model_dir)
    by_name = {c["name"]: c for c in report["configurations"]}
    assert by_name["torch"]["status"] == "ok", by_name["torch"]["error"]
    assert report["workload"]["baseline_prompt"] == "<image>\nWhat is in this image?"
    assert by_name["torch"]["token_ids"] == by_name["onnxruntime/CPU"]["token_ids"]


def test_a_failing_baseline_is_reported_and_the_profile_goes_on(clip_llama_f16, photo, monkeypatch):
    from edgebridge.exporters import baselines
    from edgebridge.profiling.runner import profile_bundle

    def broken(*_args, **_kwargs):
        raise ValueError("the peer broke\nsecond line")

    monkeypatch.setitem(baselines.RUNNERS, "torch", broken)
    report = profile_bundle(clip_llama_f16.bundle, prompt=PROMPT, images=[photo], max_new_tokens=3, runs=1,
                            warmup=0, baselines=["torch"], model_dir=clip_llama_f16.model_dir)
    by_name = {c["name"]: c for c in report["configurations"]}
    assert by_name["onnxruntime/CPU"]["status"] == "ok"
    assert by_name["torch"]["status"] == "error"
    assert by_name["torch"]["error"] == "baseline 'torch' failed: ValueError: the peer broke"
