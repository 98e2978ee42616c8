"""The analysis as ONE self-contained HTML file: inline CSS and SVG, no network, no external scripts.

A Content-Security-Policy meta tag forbids every network fetch, so the page provably renders offline.
A tiny inline script marks the page once it has loaded (`data-rendered="ok"` and the number of ranking
rows on <body>, `data-js-errors` on any script error): a headless browser's DOM dump then shows that
the page rendered, which is what the test checks.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

from .._version import __version__
from .curves import convergence_section
from .plots import histogram_svg, matplotlib_available

if TYPE_CHECKING:  # pragma: no cover
    from . import AnalysisResult

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}
h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:13px}
th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}
th{background:#f5f5f5}
td.l,th.l{text-align:left}
tr.advised td{background:#fff3cd}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f7f7f7;padding:.6rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.good{color:#1a7f37}
.bad{color:#b42318}
.figs{display:flex;flex-wrap:wrap;gap:.5rem}
.figs figure{margin:0}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dl.summary dt{font-weight:600}
dl.summary dd{margin:0}
.note{color:#555;font-size:12px}
"""
SCRIPT = """
window.addEventListener('error', function(e){document.body.setAttribute('data-js-errors', String(e.message));});
document.addEventListener('DOMContentLoaded', function(){
  var rows = document.querySelectorAll('#sensitivity tbody tr').length;
  document.body.setAttribute('data-ranking-rows', String(rows));
  document.body.setAttribute('data-rendered', rows > 0 ? 'ok' : 'empty');
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Optional[float], digits: int = 5) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "", left: int = 1,
           row_classes: Optional[Sequence[str]] = None) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary(r: "AnalysisResult") -> str:
    o = r.overall
    verdict = o.meets(r.target_cosine)
    algo = r.algo if r.algo != "auto" else _auto_line(r)
    items = [
        ("Model", f"{_e(Path(r.model).name)} <span class=note>sha256 {_e(r.model_sha256[:16])}…</span>"),
        ("Data", f"{_e(r.data)}: {r.samples} samples (seed {r.seed})"),
        ("Algorithm", _e(algo)),
        ("Output cosine (all INT8)", f'<span class="{"good" if verdict else "bad"}">{_num(o.cosine)}</span> '
                                     f"(target {r.target_cosine})"),
        ("Top-1 / sequence agreement", _pct(o.top1_agreement) + (
            "" if o.agreement_meaningful else
            f" <span class=bad>not meaningful on these samples: FP32's own top-1 margin is below the error the target "
            f"cosine tolerates on {o.undecided:.0%} of them (images unlike the model's data?); judged by cosine alone"
            f"</span>")),
        ("SQNR", f"{_num(o.sqnr_db, 2)} dB"),
        ("Size", f"FP32 {_mb(r.fp32_bytes)} → INT8 Q/DQ {_mb(r.int8_bytes)} "
                 f"({r.fp32_bytes / max(r.int8_bytes, 1):.1f}× smaller)"),
        ("Quantised nodes", f"{r.nodes_total} ({len(r.sensitivity)} analysed)"),
        ("Cost", f"{r.runs} configurations run by onnxruntime"),
    ]
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<h2>Summary</h2><dl class="summary">{rows}</dl>'


def _auto_line(r: "AnalysisResult") -> str:
    held = ""
    if r.auto_held_out:
        held = "; held-out half: " + ", ".join(f"{k} {v:.5f}" for k, v in r.auto_held_out.items())
    if r.auto_mode == "per_tensor":
        return f"auto: per tensor ({len(r.auto_changes)} tensor(s) moved from {r.best_single}{held})"
    if r.auto_changes:
        return (f"auto: {r.best_single} for every tensor (a per-tensor choice moving {len(r.auto_changes)} "
                f"tensor(s) did not hold on the held-out half{held})")
    return f"auto: {r.best_single} for every tensor (no per-tensor change helped)"


def _algorithms(r: "AnalysisResult") -> str:
    rows = []
    for name, s in r.algorithm_scores.items():
        mark = " ✔" if (name == r.algo) or (r.algo == "auto" and name == "auto") else ""
        rows.append([f"{_e(name)}{mark}", _num(s.cosine), _num(s.sqnr_db, 2), f"{s.mse:.4g}", _pct(s.top1_agreement)])
    out = ["<h2>Calibration algorithms</h2>",
           f"<p>The fully quantised model with each algorithm's ranges (metric: {_e(r.metric)}). "
           f"Best single algorithm: <b>{_e(r.best_single)}</b>.</p>",
           _table(["algorithm", "cosine", "SQNR dB", "MSE", "top-1 agree"], rows, "algorithms")]
    tensors = list(r.per_tensor_algo)
    if tensors:
        algos = list(r.candidates)
        trs = [[f"<code>{_e(t)}</code>"] + [f"{r.candidates[a].get(t, float('nan')):.5g}" for a in algos]
               + [_e(r.per_tensor_algo[t])] for t in tensors]
        out.append(f"<details><summary>amax per tensor ({len(tensors)} quantised activations)</summary>"
                   + _table(["tensor"] + algos + ["used"], trs, "per-tensor") + "</details>")
    return "".join(out)


def _sensitivity(r: "AnalysisResult") -> str:
    advised = set(r.advice.nodes)
    rows, classes = [], []
    for s in r.sensitivity:
        threshold = ", ".join(f"{v:.4g}" for v in s.thresholds.values()) or "-"
        dtype = "keep FP16 / int16" if s.label in advised else "int8"
        rows.append([str(s.rank), f"<code>{_e(s.label)}</code>", _e(s.op_type), _num(s.alone.cosine),
                     _num(s.all_but.cosine), _num(s.alone.sqnr_db, 2), f"{s.alone.mse:.3g}", threshold, dtype])
        classes.append("advised" if s.label in advised else "")
    return ("<h2>Per-node sensitivity</h2>"
            "<p><b>alone</b>: only this node quantised (weights and input activations), everything else FP32. "
            "<b>all but</b>: everything quantised except this node (higher = more to gain by keeping it in float). "
            "Most sensitive first; advised nodes highlighted.</p>"
            + _table(["rank", "node", "type", "cosine alone", "cosine all but", "SQNR alone dB", "MSE alone",
                      "threshold (amax)", "data type"], rows, "sensitivity", left=3, row_classes=classes))


def _histograms(r: "AnalysisResult", count: int) -> str:
    if r.stats is None or count <= 0:
        return ""
    if not matplotlib_available():
        return ("<h2>Histograms</h2><p class=note>Figures need matplotlib: "
                "<code>pip install 'ptqengine[report]'</code>.</p>")
    tensors: List[str] = []
    for s in r.sensitivity:
        for t in s.activations:
            if t not in tensors and t in r.stats.tensors:
                tensors.append(t)
        if len(tensors) >= count:
            break
    figures = []
    for t in tensors[:count]:
        thresholds = {a: c[t] for a, c in r.candidates.items() if t in c}
        if r.algo == "auto" and t in r.amax:
            thresholds["auto"] = r.amax[t]
        svg = histogram_svg(t, r.stats.tensors[t], thresholds)
        if svg:
            figures.append(f"<figure>{svg}</figure>")
    return ("<h2>Histograms of the most sensitive tensors</h2>"
            "<p class=note>|x| of the input activations of the top-ranked nodes (log counts), with each "
            "algorithm's threshold.</p>" f'<div class="figs">{"".join(figures)}</div>')


def _advice(r: "AnalysisResult") -> str:
    a = r.advice
    out = ["<h2>Mixed-precision advice</h2>"]
    if not a.nodes:
        out.append(f"<p class=good>Fully INT8 already reaches cosine {_num(a.cosine_int8)} ≥ {a.target_cosine}: "
                   "nothing needs to stay in higher precision.</p>")
        return "".join(out)
    status = "reaches" if a.reached else "does NOT reach"
    out.append(f"<p>Keeping <b>{len(a.nodes)}</b> node(s) out of INT8 {status} the target: cosine "
               f"{_num(a.cosine_int8)} → <b>{_num(a.cosine)}</b> (target {a.target_cosine}).")
    if r.advice_check is not None:
        out.append(f" Checked on the real Q/DQ export with these exclusions: cosine {_num(r.advice_check.cosine)}, "
                   f"top-1 agreement {_pct(r.advice_check.top1_agreement)}.")
    out.append("</p><ul>" + "".join(f"<li><code>{_e(n)}</code></li>" for n in a.nodes) + "</ul>")
    out.append("<h3>ptqengine quantize</h3><pre>ptqengine quantize MODEL.onnx ... "
               + _e(" ".join(a.exclude_args)) + "</pre>")
    if a.trt_layer_precisions:
        out.append("<h3>TensorRT (trtexec, implicit INT8 with a calibration cache)</h3><pre>trtexec --onnx=MODEL.onnx "
                   "--int8 --fp16 --calib=MODEL.cache " + _e(a.trt_layer_precisions) + "</pre>")
    if a.horizon_node_config:
        out.append("<h3>Horizon J6 quant_config.json (node_config)</h3><pre>"
                   + _e(json.dumps({"node_config": a.horizon_node_config}, indent=2)) + "</pre>")
        out.append("<h3>Horizon J5 / X5 config.yaml (model_parameters.node_info)</h3><pre>"
                   + _e(json.dumps({"node_info": a.horizon_node_info}, indent=2)) + "</pre>")
    if a.unnamed:
        out.append(f"<p class=note>{len(a.unnamed)} advised node(s) have no ONNX name (shown by their first "
                   "output); TensorRT and Horizon cannot address them until they are named.</p>")
    if a.trace:
        out.append("<details><summary>greedy steps</summary>"
                   + _table(["step", "cosine"], [[f"<code>{_e(n)}</code>", _num(c)] for n, c in a.trace])
                   + "</details>")
    return "".join(out)


def _convergence(r: "AnalysisResult") -> str:
    return "" if r.stats is None else convergence_section(r.stats.metadata, _table)


def _notes(r: "AnalysisResult") -> str:
    items = list(r.notes)
    if r.skipped:
        items.append(f"{len(r.skipped)} tensor(s) get no Q/DQ (no usable range): "
                     + ", ".join(t for t, _ in r.skipped[:5]))
    if not items:
        return ""
    return "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in items) + "</ul>"


def render_html(result: "AnalysisResult", histograms: int = 6) -> str:
    """The report page (text); byte-identical for identical results."""
    title = f"ptqengine analyze: {Path(result.model).name}"
    body = "".join([f"<h1>{_e(title)}</h1>", _summary(result), _algorithms(result), _sensitivity(result),
                    _histograms(result, histograms), _advice(result), _convergence(result), _notes(result),
                    f'<p class=note>ptqengine {_e(__version__)}</p>'])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{_e(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>"
            f"<body>{body}</body></html>\n")
