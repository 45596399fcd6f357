"""``report.html``: one self-contained file (inline SVG and CSS, no network) from a profile report.

Sections: the summary table; a stacked per-stage bar per configuration (p50 of each stage); the
per-token latency distribution per configuration (histogram with p50/p95 marks); edgebridge /
baseline ratios; decode memory traffic against the measured bandwidth; the environment. The
report JSON is embedded, and a small script offers it for download.
"""

from __future__ import annotations

import html
import json
from typing import Any

STAGE_COLOURS = {
    "preprocess": "#8dd3c7", "encode": "#80b1d3", "bridge": "#bebada", "encode + bridge": "#80b1d3",
    "prefill": "#fb8072", "other": "#d9d9d9", "decode": "#fdb462",
}
BAR_H, GAP, LABEL_W, CHART_W = 26, 10, 230, 620


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _p50(conf: dict[str, Any], stage: str) -> float | None:
    return (conf["stages"].get(stage) or {}).get("p50")


def _fmt(x: Any, unit: str = "", digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}{unit}"
    return f"{x}{unit}"


def _mb(x: Any) -> str:
    return "–" if x is None else f"{x / 1e6:,.1f} MB"


def stage_segments(conf: dict[str, Any]) -> list[tuple[str, float]]:
    """(stage, ms) pieces of one configuration's p50 timeline: up to the first token, then decode."""
    pre = _p50(conf, "preprocess_ms") or 0.0
    if conf["kind"] == "edgebridge":
        parts = [("preprocess", pre), ("encode", _p50(conf, "encode_ms") or 0.0)]
        if _p50(conf, "bridge_ms") is not None:
            parts.append(("bridge", _p50(conf, "bridge_ms")))
        parts.append(("prefill", _p50(conf, "prefill_ms") or 0.0))
    else:
        parts = [("preprocess", pre), ("encode + bridge", _p50(conf, "encode_bridge_ms") or 0.0)]
    ttft = _p50(conf, "ttft_ms")
    if ttft is not None:
        rest = ttft - sum(ms for _, ms in parts)
        parts.append(("prefill" if conf["kind"] == "baseline" else "other", max(rest, 0.0)))
    total = _p50(conf, "total_ms")
    if total is not None and ttft is not None:
        parts.append(("decode", max(total - ttft, 0.0)))
    return [(name, ms) for name, ms in parts if ms > 0]


def _stacked_bars(configs: list[dict[str, Any]]) -> str:
    rows = [c for c in configs if c["status"] == "ok"]
    if not rows:
        return "<p>No configuration ran.</p>"
    longest = max(sum(ms for _, ms in stage_segments(c)) for c in rows) or 1.0
    scale = CHART_W / longest
    height = len(rows) * (BAR_H + GAP) + 40
    out = [f'<svg id="stages-chart" class="chart" width="{LABEL_W + CHART_W + 90}" height="{height}" '
           f'role="img" aria-label="per-stage time per configuration">']
    for i, conf in enumerate(rows):
        y = i * (BAR_H + GAP) + 4
        out.append(f'<text x="{LABEL_W - 8}" y="{y + BAR_H * 0.68}" text-anchor="end">{_esc(conf["name"])}</text>')
        x = LABEL_W
        for name, ms in stage_segments(conf):
            w = max(ms * scale, 0.5)
            out.append(f'<rect class="seg" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BAR_H}" '
                       f'fill="{STAGE_COLOURS[name]}"><title>{_esc(conf["name"])}: {_esc(name)} '
                       f'{ms:,.2f} ms (p50)</title></rect>')
            x += w
        total = sum(ms for _, ms in stage_segments(conf))
        out.append(f'<text x="{x + 6:.1f}" y="{y + BAR_H * 0.68}">{total:,.1f} ms</text>')
    legend_y = len(rows) * (BAR_H + GAP) + 22
    x = LABEL_W
    for name, colour in STAGE_COLOURS.items():
        out.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{x + 16}" y="{legend_y}">{_esc(name)}</text>')
        x += 16 + 8 * len(name) + 18
    out.append("</svg>")
    return "".join(out)


def _histogram(conf: dict[str, Any], lo: float, hi: float, bins: int = 30) -> str:
    stats = conf["stages"].get("per_token_ms") or {}
    xs = stats.get("samples") or []
    w, h = 420, 90
    if not xs:
        return '<p class="muted">no per-token samples</p>'
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for x in xs:
        counts[min(int((x - lo) / span * bins), bins - 1)] += 1
    peak = max(counts) or 1
    bw = w / bins
    out = [f'<svg class="chart token-hist" width="{w + 20}" height="{h + 24}" role="img" '
           f'aria-label="per-token latency histogram of {_esc(conf["name"])}">']
    for i, c in enumerate(counts):
        bh = c / peak * h
        out.append(f'<rect x="{10 + i * bw:.1f}" y="{h - bh + 4:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" '
                   f'fill="#80b1d3"><title>{lo + i * span / bins:.2f}-{lo + (i + 1) * span / bins:.2f} ms: '
                   f'{c} tokens</title></rect>')
    for label, key, colour in (("p50", "p50", "#d62728"), ("p95", "p95", "#9467bd")):
        v = stats.get(key)
        if v is not None:
            x = 10 + (v - lo) / span * w
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{h + 4}" stroke="{colour}" stroke-width="2">'
                       f'<title>{label} {v:.2f} ms</title></line>'
                       f'<text x="{x + 3:.1f}" y="12" fill="{colour}">{label}</text>')
    out.append(f'<text x="10" y="{h + 20}">{lo:.2f} ms</text>'
               f'<text x="{w + 10}" y="{h + 20}" text-anchor="end">{hi:.2f} ms</text></svg>')
    return "".join(out)


def _token_distributions(configs: list[dict[str, Any]]) -> str:
    rows = [c for c in configs if c["status"] == "ok" and (c["stages"].get("per_token_ms") or {}).get("n")]
    if not rows:
        return "<p>No per-token samples.</p>"
    lo = min(c["stages"]["per_token_ms"]["min"] for c in rows)
    hi = max(c["stages"]["per_token_ms"]["p95"] * 1.5 for c in rows)
    hi = min(hi, max(c["stages"]["per_token_ms"]["max"] for c in rows))
    parts = ['<div id="token-chart">']
    for conf in rows:
        s = conf["stages"]["per_token_ms"]
        parts.append(f'<div class="hist"><h4>{_esc(conf["name"])} <span class="muted">n={s["n"]}, '
                     f'p50 {s["p50"]:.2f} ms, p95 {s["p95"]:.2f} ms</span></h4>{_histogram(conf, lo, hi)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _summary_table(report: dict[str, Any]) -> str:
    head = ["configuration", "status", "load", "preprocess", "encode", "bridge", "prefill", "prefill tok/s",
            "TTFT p50 / p95", "per token p50 / p95", "decode tok/s", "peak RSS", "devices / precision"]
    rows = []
    for c in report["configurations"]:
        s = c["stages"]

        def cell(stage: str, unit: str = " ms") -> str:
            return _fmt((s.get(stage) or {}).get("p50"), unit)

        def pair(stage: str) -> str:
            st = s.get(stage) or {}
            return f"{_fmt(st.get('p50'))} / {_fmt(st.get('p95'))} ms" if st.get("n") else "–"

        devices = "; ".join(f"{k}: {v.get('executed')} {v.get('precision')}" + _gpu_note(v) + _prefill_note(v)
                            for k, v in (c.get("devices") or {}).items())
        status = _esc(c["status"]) + (f'<div class="err">{_esc(c["error"])}</div>' if c.get("error") else "")
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in [
            f"<b>{_esc(c['name'])}</b><div class='muted'>{_esc(c['kind'])}</div>", status, cell("load_ms"),
            cell("preprocess_ms"), cell("encode_ms") if c["kind"] == "edgebridge" else cell("encode_bridge_ms"),
            cell("bridge_ms"), cell("prefill_ms"), cell("prefill_tokens_per_s", ""), pair("ttft_ms"),
            pair("per_token_ms"), cell("decode_tokens_per_s", ""), _mb(c.get("peak_rss_bytes")),
            _esc(devices or c.get("settings", {}).get("engine", "–"))]) + "</tr>")
    return ('<table id="summary"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _ratio_section(report: dict[str, Any]) -> str:
    comps = [c for c in report.get("comparisons", []) if c["ratios"]]
    if not comps:
        missing = [c for c in report["configurations"] if c["kind"] == "baseline" and c["status"] != "ok"]
        note = "".join(f"<p class='err'>{_esc(c['name'])}: {_esc(c['error'])}</p>" for c in missing)
        return note + "<p>No baseline in this profile (run with <code>--baseline torch</code> or " \
                      "<code>--baseline optimum-openvino</code> and <code>--model-dir</code>).</p>"
    rows, bars = [], []
    labels = {"encode_bridge_ms": "encode + bridge", "ttft_ms": "time to first token", "per_token_ms": "per token",
              "decode_tokens_per_s": "decode tokens/s", "load_ms": "load", "preprocess_ms": "preprocess"}
    for comp in comps:
        for stage, r in comp["ratios"].items():
            good = r["ratio"] < 1 if r["better"] == "lower" else r["ratio"] > 1
            rows.append(f"<tr><td>{_esc(comp['configuration'])}</td><td>{_esc(comp['baseline'])}</td>"
                        f"<td>{_esc(labels.get(stage, stage))}</td><td>{r['edgebridge']:,.2f}</td>"
                        f"<td>{r['baseline']:,.2f}</td><td class='{'good' if good else 'bad'}'>{r['ratio']:.3f}</td>"
                        f"<td>{_esc(r['better'])} is better</td></tr>")
            bars.append((f"{comp['configuration']} vs {comp['baseline']}: {labels.get(stage, stage)}", r["ratio"], good))
    peak = max(max(b[1] for b in bars), 1.0) * 1.1
    scale = CHART_W / peak
    svg = [f'<svg id="ratio-chart" class="chart" width="{LABEL_W * 2 + CHART_W}" height="{len(bars) * 22 + 20}" '
           f'role="img" aria-label="edgebridge / baseline ratios">']
    for i, (label, ratio, good) in enumerate(bars):
        y = i * 22 + 4
        svg.append(f'<text x="{LABEL_W * 2 - 8}" y="{y + 13}" text-anchor="end">{_esc(label)}</text>'
                   f'<rect x="{LABEL_W * 2}" y="{y}" width="{ratio * scale:.1f}" height="16" '
                   f'fill="{"#4daf4a" if good else "#e41a1c"}"><title>{ratio:.3f}</title></rect>'
                   f'<text x="{LABEL_W * 2 + ratio * scale + 4:.1f}" y="{y + 13}">{ratio:.2f}x</text>')
    one = LABEL_W * 2 + scale
    svg.append(f'<line x1="{one:.1f}" x2="{one:.1f}" y1="0" y2="{len(bars) * 22 + 6}" stroke="#333" '
               f'stroke-dasharray="4 3"/><text x="{one + 3:.1f}" y="{len(bars) * 22 + 18}">1.0</text></svg>')
    table = ("<table id='ratios'><thead><tr><th>configuration</th><th>baseline</th><th>stage</th><th>edgebridge p50</th>"
             "<th>baseline p50</th><th>ratio</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return "".join(svg) + table


def _traffic(report: dict[str, Any]) -> str:
    bw = report.get("memory_bandwidth") or {}
    rows = []
    for c in report["configurations"]:
        t = c.get("decode_traffic")
        if t:
            frac = t.get("fraction_of_bandwidth")
            rows.append(f"<tr><td>{_esc(c['name'])}</td><td>{_mb(t['bytes_per_token'])}</td>"
                        f"<td>{t['achieved_bytes_per_s'] / 1e9:,.2f} GB/s</td>"
                        f"<td>{'–' if frac is None else f'{frac * 100:.1f} %'}</td></tr>")
    head = (f"<p>Measured streaming bandwidth: <b>{bw.get('bytes_per_s', 0) / 1e9:,.2f} GB/s</b> "
            f"<span class='muted'>({_esc(bw.get('method', 'not measured'))})</span></p>")
    return head + ("<table id='traffic'><thead><tr><th>configuration</th><th>bytes read per token</th>"
                   "<th>achieved</th><th>of bandwidth</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
                   if rows else "")


def _gpu_note(device: dict[str, Any]) -> str:
    """`` (Vulkan0: llvmpipe ..., 13/13 layers)`` for a component on a llama.cpp GPU device."""
    if not device.get("device"):
        return ""
    return f" ({device['device']}: {device.get('device_description', '')}, {device.get('gpu_layers')} layers)"


def _devices_line(devices: dict[str, Any]) -> str:
    """Each engine's reachable devices, in one line per engine."""
    parts = []
    for engine, found in devices.items():
        if isinstance(found, list):
            found = ", ".join(f"{d.get('name')} ({d.get('description')})" if isinstance(d, dict) else str(d)
                              for d in found)
        elif isinstance(found, dict):
            found = ", ".join(f"{k} ({v})" for k, v in found.items())
        parts.append(f"{engine}: {found}")
    return "; ".join(parts)


def _environment(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items() if v)
    items = [("CPU", env.get("cpu_model")), ("CPU flags", " ".join(env.get("cpu_flags") or [])),
             ("cores (available / logical)", f"{env.get('cores_available')} / {env.get('cores_logical')}"),
             ("threads", env.get("threads")), ("memory", _mb(env.get("memory_bytes"))), ("OS", env.get("os")),
             ("Python", env.get("python")), ("libraries", libs),
             ("compute devices", _devices_line(env.get("devices") or {}))]
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items) + "</dl>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h4{margin:8px 0 2px;font-size:14px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.muted{color:#777;font-size:12px}
.err{color:#b00;font-size:12px;text-align:left}.good{color:#1a7f1a;font-weight:600}.bad{color:#b00;font-weight:600}
svg text{font-size:12px;fill:#222}.hist{display:inline-block;margin-right:18px}dl{display:grid;
grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}dt{font-weight:600}dd{margin:0}
"""

SCRIPT = """
(function () {
  var data = document.getElementById('report-data').textContent;
  var link = document.getElementById('download-json');
  link.href = 'data:application/json;charset=utf-8,' + encodeURIComponent(data);
  var report = JSON.parse(data);
  var ok = report.configurations.filter(function (c) { return c.status === 'ok'; }).length;
  document.getElementById('config-count').textContent = ok + ' of ' + report.configurations.length;
})();
"""


def render_html(report: dict[str, Any]) -> str:
    bundle = report.get("bundle") or {}
    work = report.get("workload") or {}
    data = json.dumps(report).replace("</", "<\\/")  # keep the embedded JSON from closing its <script>
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgebridge profile</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>edgebridge profile: {_esc(bundle.get('family', 'application'))} <span class="muted">{_esc(bundle.get('path', ''))}</span></h1>
<p class="muted">{_esc(report.get('created_utc'))} · schema {_esc(report.get('schema_version'))} ·
configurations that ran: <span id="config-count"></span> · {_esc(work.get('runs'))} runs after
{_esc(work.get('warmup'))} warm-up · {_esc(work.get('max_new_tokens'))} new tokens ·
bundle {_mb(bundle.get('total_bytes'))} · <a id="download-json" download="report.json">report.json</a></p>
<h2>Summary (p50 unless noted)</h2>{_summary_table(report)}
<h2>Where the time goes (p50 per stage)</h2>{_stacked_bars(report['configurations'])}
<h2>Per-token latency</h2>{_token_distributions(report['configurations'])}
<h2>Against the baselines (edgebridge / baseline)</h2>{_ratio_section(report)}
<h2>Decode memory traffic</h2>{_traffic(report)}
<h2>Environment</h2>{_environment(report)}
<script type="application/json" id="report-data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def _prefill_note(device: dict) -> str:
    """`` (prefill: onnxruntime int8)`` when the LLM's prompt ran through the bundle's prefill graph."""
    prefill = device.get("prefill") or {}
    if prefill.get("engine") in (None, "llama.cpp"):
        return ""
    return f" (prefill: {prefill['engine']} {prefill.get('precision', '')})".replace(" )", ")")
