"""FP32 vs INT8: run both models on the same data and say how far the quantised one drifted.

Per model output (ptqengine.metrics): cosine similarity and SQNR over all samples (streamed: running sums),
maximum and mean absolute error; top-1 agreement for classifier-shaped outputs [N, C] and sequence
agreement (argmax over the last axis equal at every position) for [N, T, C] outputs such as CTC text
recognisers; accuracy of both models against labels when given. Also the model sizes on disk and the
latency of each in onnxruntime (median of timed single-sample runs, full optimisations).

The INT8 model is measured as TensorRT runs it: the collection core's SIMULATE session keeps Q/DQ unfused,
so the figures are the calibration's, the same on every CPU. onnxruntime's own fused int8 CPU kernels give
CPU-dependent results (x86 without VNNI saturates); `cpu_kernels=True` reports them as well, labelled.
The verdict is ptqengine.metrics' rule, the one `analyze`'s advice aims at.

The INT8 side may also be a TensorRT calibration cache (TensorRT <= 10): it is simulated as TensorRT's
implicit int8 would run it, worst case (ptqengine.qdq.trt_implicit.simulate_cache: every tensor TensorRT's
fusions leave quantisable quantised with the cache's scale, weights per channel with max|w|), so two caches
get numbers side by side without TensorRT. No latency is measured for a cache.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import write_text_atomic
from .collect import (CPU, BatchStream, Device, Purpose, Runner, check_device, create_session, parse_device,
                      run_batch_size)
from .datasource import open_source
from .errors import DataError, ModelError, OptionError
from .metrics import AGREEMENT_TARGET, COSINE_TARGET, OutputComparison, worst
from .model import info_from_model, load_model
from .preprocess import RAW_PIXELS_NOTE, PreprocessConfig, config_for, plans_for, raw_pixels

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
LATENCY_WARMUP = 3
LATENCY_RUNS = 20


@dataclass
class OutputMetrics:
    name: str
    shape: List[int]  # of the last batch, FP32 model
    cosine: float
    sqnr_db: float
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: Optional[float] = None  # [N, C] outputs
    sequence_agreement: Optional[float] = None  # [N, T, C] outputs
    # share of samples whose FP32 top-1 margin is below the error --target-cosine tolerates ([N, C] outputs):
    # above metrics.UNDECIDED_LIMIT, top-1 agreement is not meaningful on these samples
    undecided: Optional[float] = None
    accuracy_fp32: Optional[float] = None
    accuracy_int8: Optional[float] = None


@dataclass
class ModelFacts:
    path: str
    size_bytes: int
    latency_ms: float  # onnxruntime, full optimisations (int8: its fused CPU kernels)


@dataclass
class EvaluationReport:
    samples: int
    outputs: List[OutputMetrics]  # INT8 with Q/DQ kept unfused: as TensorRT computes it
    fp32: ModelFacts
    int8: ModelFacts
    verdict: str
    passed: bool
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    target_cosine: float = COSINE_TARGET
    # onnxruntime's fused int8 CPU kernels on this machine's CPU (cpu_kernels=True): CPU-dependent
    outputs_cpu_kernels: Optional[List[OutputMetrics]] = None
    # INT8 given as a TensorRT cache: what the simulation quantised (simulated_cache)
    cache: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def write_json(self, path: PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _metrics(acc: OutputComparison, labels: Optional[np.ndarray], target_cosine: float) -> OutputMetrics:
    m = OutputMetrics(acc.name, acc.shape, acc.cosine, acc.sqnr_db, acc.max_abs, acc.mean_abs_error,
                      undecided=acc.undecided(target_cosine))
    if acc.agreement is not None:
        if len(acc.shape) == 2:
            m.top1_agreement = acc.agreement
            if labels is not None:
                ref, test = np.concatenate(acc.ref_top1), np.concatenate(acc.test_top1)
                m.accuracy_fp32 = float(np.mean(ref == labels))
                m.accuracy_int8 = float(np.mean(test == labels))
        else:
            m.sequence_agreement = acc.agreement
    return m


# --- data -------------------------------------------------------------------------------------------
def _batches(data: Any, info, preprocess, batch_size: int, limit: Optional[int], seed: int,
             threads: Optional[int]) -> Tuple[Iterator[Tuple[Dict[str, np.ndarray], int, List[str]]], Any]:
    """(feeds, count, sample keys) from any data calibrate accepts; a list of feed dicts is run as given."""
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, Mapping) for d in data):
        feeds = list(data)[:limit] if limit else list(data)
        return (({n: np.ascontiguousarray(a) for n, a in f.items()}, _batch_of(f), []) for f in feeds), None
    workers = threads or os.cpu_count() or 1
    source = open_source(data, info.inputs, lambda: plans_for(info.inputs, preprocess),
                         limit=limit, seed=seed, strict=False, workers=workers, depth=2 * max(batch_size, workers))
    stream = BatchStream(source, info.inputs, batch_size)
    return ((b.feeds, b.count, b.keys) for b in stream), source


def _batch_of(feed: Mapping[str, Any]) -> int:
    arrays = [np.asarray(a) for a in feed.values()]
    return max((a.shape[0] for a in arrays if a.ndim), default=1)


def read_labels(path: PathLike) -> Dict[str, int]:
    """Labels file: one `image-name label` per line (whitespace or comma separated; label = class index)."""
    p = Path(path)
    try:
        # surrogateescape: names that are not UTF-8 match the image files' names as read from the folder
        lines = p.read_bytes().decode("utf-8", "surrogateescape").splitlines()
    except OSError as exc:
        raise DataError(f"{p}: cannot read labels ({exc.strerror})") from None
    labels: Dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.replace(",", " ").split()
        try:
            name, label = " ".join(parts[:-1]), int(parts[-1])
        except (ValueError, IndexError):
            raise DataError(f"{p}:{number}: expected 'image-name class-index', got {text!r}") from None
        if not name:
            raise DataError(f"{p}:{number}: expected 'image-name class-index', got {text!r}")
        labels[name] = label
    return labels


def _label_array(labels: Mapping[str, int], keys: Sequence[str], labels_path: PathLike) -> np.ndarray:
    """Labels in sample order, by each image's path relative to --data (or its file name)."""
    out = []
    for key in keys:
        name = key if key in labels else Path(key).name
        if name not in labels:
            raise DataError(f"{labels_path}: no label for image {key}")
        out.append(labels[name])
    return np.asarray(out)


# --- latency ----------------------------------------------------------------------------------------
def _latency_ms(session: Any, feeds: Dict[str, np.ndarray], path: Path) -> float:
    runner = Runner(session, [o.name for o in session.get_outputs()], origin=str(path))
    for _ in range(LATENCY_WARMUP):
        runner.run(feeds)
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _first_sample(feeds: Dict[str, np.ndarray], ranks: Mapping[str, int]) -> Dict[str, np.ndarray]:
    """The first sample of a batch, keeping the batch dimension (scalars and unbatched inputs as they are)."""
    return {n: (a[:1] if a.ndim and a.ndim == ranks.get(n, a.ndim) and a.shape[0] > 1 else a) for n, a in feeds.items()}


# --- the evaluation -------------------------------------------------------------------------------
def evaluate(fp32_model: PathLike, int8_model: PathLike, data: Any, *, limit: Optional[int] = None,
             labels: Optional[PathLike] = None, batch_size: int = 8, seed: int = 0,
             preprocess: Union[PreprocessConfig, Mapping[str, PreprocessConfig], None] = None,
             threads: Optional[int] = None, latency: bool = True, cpu_kernels: bool = False,
             target_cosine: float = COSINE_TARGET, device: Union[str, Device] = CPU) -> EvaluationReport:
    """Run both models over `data` (anything calibrate accepts, or a list of ready feed dicts)."""
    fp32_path, int8_path = Path(fp32_model), Path(int8_model)
    device = parse_device(device)
    check_device(device, statistics=False)
    info = info_from_model(load_model(fp32_path, load_external_data=False), fp32_path)
    run_batch = run_batch_size(info.inputs, batch_size)
    label_map = read_labels(labels) if labels else None
    if label_map is not None and not (isinstance(data, (str, Path)) and Path(data).is_dir()):
        raise OptionError("--labels needs --data to be a directory of images")
    int8_source, cache = simulated_cache(fp32_path, int8_path)
    if cache is not None and cpu_kernels:
        raise OptionError("--cpu-kernels measures onnxruntime's int8 kernels on a Q/DQ model; "
                          f"{int8_path} is a TensorRT cache (simulated as TensorRT computes it)")
    sessions = {"fp32": create_session(fp32_path, str(fp32_path), purpose=Purpose.REFERENCE, device=device,
                                       threads=threads),
                "int8": create_session(int8_source, str(int8_path), purpose=Purpose.SIMULATE, device=device,
                                       threads=threads)}
    if cpu_kernels:
        sessions["cpu_kernels"] = create_session(int8_path, str(int8_path), purpose=Purpose.DEPLOY, threads=threads)
    names = [o.name for o in sessions["fp32"].get_outputs()]
    test_names = [o.name for o in sessions["int8"].get_outputs()]
    if names != test_names:
        raise ModelError(f"{int8_path}: outputs {test_names} differ from the FP32 model's {names}")
    runners = {k: Runner(s, names, device, origin=str(fp32_path if k == "fp32" else int8_path))
               for k, s in sessions.items()}
    compared = {k: [OutputComparison(n, keep_top1=label_map is not None) for n in names]
                for k in runners if k != "fp32"}
    iterator, source = _batches(data, info, preprocess, run_batch, limit, seed, threads)
    ranks = {s.name: s.rank for s in info.inputs}
    samples, first, keys = 0, None, []
    for feeds, count, batch_keys in iterator:
        if first is None:  # ready feed dicts are timed as given; batches from a source per sample
            first = feeds if source is None else _first_sample(feeds, ranks)
        reference = runners["fp32"].run(feeds)
        for kind, accs in compared.items():
            for acc, ref, test in zip(accs, reference, runners[kind].run(feeds)):
                acc.add(ref, test)
        samples += count
        keys += batch_keys
    if samples == 0:
        raise DataError(f"{data}: no usable samples")
    configs = [config_for(preprocess, s.name) for s in info.inputs]
    raw = source is not None and source.kind == "images" and raw_pixels(configs)
    if raw:
        log.warning(RAW_PIXELS_NOTE)  # cosine 0.7 from a forgotten --mean/--std would look like bad INT8
    label_array = _label_array(label_map, keys, labels) if label_map is not None else None
    outputs = [_metrics(acc, label_array, target_cosine) for acc in compared["int8"]]
    if label_array is not None and not any(m.accuracy_fp32 is not None for m in outputs):
        raise OptionError("--labels: the model has no classifier-shaped [N, C] output")
    cpu_outputs = [_metrics(acc, label_array, target_cosine) for acc in compared["cpu_kernels"]] if cpu_kernels else None
    facts = {}
    for kind, path in (("fp32", fp32_path), ("int8", int8_path)):
        timed = latency and not (kind == "int8" and cache is not None)  # a cache has no onnxruntime latency
        deployed = sessions.get("cpu_kernels") if kind == "int8" else None
        if timed and deployed is None:
            deployed = create_session(path, str(path), purpose=Purpose.DEPLOY, threads=threads)
        facts[kind] = ModelFacts(str(path), path.stat().st_size, _latency_ms(deployed, first, path) if timed else 0.0)
    passed, verdict = _verdict(compared["int8"], target_cosine, raw)
    return EvaluationReport(samples, outputs, facts["fp32"], facts["int8"], verdict, passed,
                            list(source.log.skipped) if source is not None else [], target_cosine, cpu_outputs,
                            cache)


def is_trt_cache(path: Path) -> bool:
    """A TensorRT calibration cache starts with its 'TRT-' header; an ONNX file never does (protobuf)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"TRT-"
    except OSError:
        return False


def simulated_cache(fp32_path: Path, int8_path: Path) -> Tuple[Union[Path, bytes], Optional[Dict[str, Any]]]:
    """(what the INT8 session loads, facts of the cache simulation or None for a Q/DQ model)."""
    if not is_trt_cache(int8_path):
        return int8_path, None
    from .formats.trt_cache import read_trt_cache
    from .qdq.trt_implicit import simulate_cache

    cache = read_trt_cache(int8_path)
    try:
        simulated = simulate_cache(fp32_path, cache.amax)
    except OptionError:  # none of the tensors TensorRT would quantise has an entry
        raise DataError(f"{int8_path}: none of its {len(cache.amax)} entries is a tensor that {fp32_path.name} "
                        "quantises: a cache of another model?") from None
    report = simulated.report
    facts = {"header": f"TRT-{cache.version_code}-{cache.algorithm}", "entries": len(cache.amax),
             "quantized_tensors": report.activation_qdq, "weights_per_channel_max": report.weight_dq,
             "float_for_lack_of_entry": [t for t, _ in report.skipped],
             "note": "TensorRT implicit int8 simulated from the cache, worst case: every tensor TensorRT's fusions "
                     "leave quantisable is quantised (TensorRT may keep some layers in FP16/FP32)"}
    return simulated.model.SerializeToString(), facts


def _verdict(comparisons: Sequence[OutputComparison], target_cosine: float,
             raw_pixels: bool = False) -> Tuple[bool, str]:
    score = worst([c.score(target_cosine) for c in comparisons])
    lowest = min(comparisons, key=lambda c: c.cosine)
    line = f"lowest output cosine {score.cosine:.4f} ({lowest.name})"
    caveat = ""
    if score.top1_agreement is not None and score.agreement_meaningful:
        line += f", lowest agreement {score.top1_agreement:.1%}"
        if score.undecided:  # a hint where agreement is low: some flips may be FP32's own indecision
            line += f" (FP32 itself undecided on {score.undecided:.0%} of samples)"
    elif score.top1_agreement is not None:
        # Most samples sit where FP32 itself barely prefers a class: a flip there is noise, not drift.
        caveat = (f"; top-1 agreement ({score.top1_agreement:.1%}) is not meaningful on these samples: FP32's own "
                  f"top-1 margin is below the error cosine {target_cosine} tolerates on {score.undecided:.0%} of them "
                  f"(images unlike the model's data?), so the verdict rests on cosine alone")
    if score.meets(target_cosine):
        return True, f"PASS: INT8 tracks FP32 ({line}){caveat}"
    # raw 0-255 pixels: a model trained on normalised inputs sees data unlike its own, which alone can do this
    advice = ("give --mean/--std first (the images went in as raw 0-255 pixels), then judge the algorithm"
              if raw_pixels else "try another --algo or exclude sensitive layers")
    return False, (f"REVIEW: INT8 drifts from FP32 ({line}; thresholds: cosine >= {target_cosine}, "
                   f"agreement >= {AGREEMENT_TARGET:.0%}){caveat}; {advice}")
