"""FP32 vs INT8: run both models on the same data and say how far the quantised one drifted.

Per model output: cosine similarity and SQNR over all samples (streamed: running sums, no outputs kept
except argmaxes), maximum absolute error; top-1 agreement for classifier-shaped outputs [N, C] and
sequence agreement (argmax over the last axis equal at every position) for [N, T, C] outputs such as
CTC text recognisers; accuracy of both models against labels when given. Also the model sizes on disk
and the latency of each in onnxruntime CPU (median of timed single-sample runs, full graph
optimisations). The verdict follows the rule of thumb Horizon's toolchain documents for its users:
output cosine >= 0.99 is fine; here top-1 / sequence agreement must also reach 0.95 (VERDICT_*).
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import write_text_atomic
from .datasource import Feeds, batches, open_source
from .errors import DataError, ModelError, OptionError
from .images import find_images, sample_files
from .model import info_from_model, load_model
from .preprocess import PreprocessConfig, config_for, plan_for

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
VERDICT_COSINE = 0.99
VERDICT_AGREEMENT = 0.95
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
    accuracy_fp32: Optional[float] = None
    accuracy_int8: Optional[float] = None


@dataclass
class ModelFacts:
    path: str
    size_bytes: int
    latency_ms: float


@dataclass
class EvaluationReport:
    samples: int
    outputs: List[OutputMetrics]
    fp32: ModelFacts
    int8: ModelFacts
    verdict: str
    passed: bool
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def write_json(self, path: PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# --- streaming per-output accumulators ------------------------------------------------------------
class _Accumulator:
    """Running sums for cosine / SQNR / errors, plus argmaxes for agreement and accuracy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dot = self.ref_sq = self.test_sq = self.noise_sq = 0.0
        self.abs_sum = 0.0
        self.count = 0
        self.max_abs = 0.0
        self.shape: List[int] = []
        self.ref_top: List[np.ndarray] = []
        self.test_top: List[np.ndarray] = []

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        if ref.shape != test.shape:
            raise ModelError(f"output {self.name!r}: FP32 shape {list(ref.shape)} but INT8 shape {list(test.shape)}")
        r = ref.astype(np.float64).ravel()
        t = test.astype(np.float64).ravel()
        diff = r - t
        self.dot += float(r @ t)
        self.ref_sq += float(r @ r)
        self.test_sq += float(t @ t)
        self.noise_sq += float(diff @ diff)
        self.abs_sum += float(np.abs(diff).sum())
        self.count += r.size
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()) if diff.size else 0.0)
        self.shape = list(ref.shape)
        if ref.ndim >= 2 and ref.shape[-1] > 1 and np.issubdtype(ref.dtype, np.floating):
            self.ref_top.append(ref.argmax(axis=-1).reshape(ref.shape[0], -1))
            self.test_top.append(test.argmax(axis=-1).reshape(ref.shape[0], -1))

    def metrics(self, labels: Optional[np.ndarray]) -> OutputMetrics:
        denominator = math.sqrt(self.ref_sq * self.test_sq)
        cosine = self.dot / denominator if denominator > 0 else (1.0 if self.noise_sq == 0 else 0.0)
        sqnr = math.inf if self.noise_sq == 0 else (10 * math.log10(self.ref_sq / self.noise_sq) if self.ref_sq > 0 else -math.inf)
        m = OutputMetrics(self.name, self.shape, cosine, sqnr, self.max_abs,
                          self.abs_sum / self.count if self.count else 0.0)
        if self.ref_top and _same_width(self.ref_top):
            ref, test = np.concatenate(self.ref_top), np.concatenate(self.test_top)
            agree = float(np.mean(np.all(ref == test, axis=1)))
            if len(self.shape) == 2:
                m.top1_agreement = agree
                if labels is not None:
                    m.accuracy_fp32 = float(np.mean(ref[:, 0] == labels))
                    m.accuracy_int8 = float(np.mean(test[:, 0] == labels))
            else:
                m.sequence_agreement = agree
        return m


def _same_width(tops: Sequence[np.ndarray]) -> bool:
    return len({t.shape[1] for t in tops}) == 1


# --- sessions -------------------------------------------------------------------------------------
def _session(path: Path, threads: Optional[int], optimized: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = int(threads or 0)
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


def _run(session: Any, feeds: Feeds, path: Path) -> List[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:
        raise DataError(f"{path}: onnxruntime failed: {str(exc).splitlines()[0]}") from None


def _latency_ms(session: Any, feeds: Feeds, path: Path) -> float:
    for _ in range(LATENCY_WARMUP):
        _run(session, feeds, path)
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        _run(session, feeds, path)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _first_sample(feeds: Feeds, ranks: Mapping[str, int]) -> Feeds:
    """The first sample of a batch, keeping the batch dimension (scalars and unbatched inputs as they are)."""
    return {n: (a[:1] if a.ndim and a.ndim == ranks.get(n, a.ndim) and a.shape[0] > 1 else a) for n, a in feeds.items()}


# --- data -------------------------------------------------------------------------------------------
def _batches(data: Any, info, preprocess, batch_size: int, limit: Optional[int], seed: int,
             threads: Optional[int]) -> Tuple[Iterator[Tuple[Feeds, int]], Any]:
    """Batches of feeds from any data calibrate accepts; a list of feed dicts is run as given."""
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, Mapping) for d in data):
        feeds = list(data)[:limit] if limit else list(data)
        return ((dict(f), _batch_of(f)) for f in feeds), None
    workers = threads or os.cpu_count() or 1
    source = open_source(data, info.inputs, lambda: [plan_for(s, config_for(preprocess, s.name)) for s in info.inputs],
                         limit=limit, seed=seed, strict=False, workers=workers, depth=2 * max(batch_size, workers))
    return batches(source.samples(), batch_size), source


def _batch_of(feed: Mapping[str, Any]) -> int:
    arrays = [np.asarray(a) for a in feed.values()]
    return max((a.shape[0] for a in arrays if a.ndim), default=1)


def read_labels(path: PathLike) -> Dict[str, int]:
    """Labels file: one `image-name label` per line (whitespace or comma separated; label = class index)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
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


def _label_array(labels: Mapping[str, int], data: Any, limit: Optional[int], seed: int,
                 skipped: Sequence[Tuple[str, str]], labels_path: PathLike) -> np.ndarray:
    """Labels in sample order: the image directory's sampled files minus the skipped ones."""
    if not isinstance(data, (str, Path)) or not Path(data).is_dir():
        raise OptionError("--labels needs --data to be a directory of images")
    directory = Path(data)
    gone = {name for name, _ in skipped}
    files = [f for f in sample_files(find_images(directory), limit, seed) if str(f) not in gone]
    out = []
    for f in files:
        rel = f.relative_to(directory).as_posix()
        key = rel if rel in labels else f.name
        if key not in labels:
            raise DataError(f"{labels_path}: no label for image {rel}")
        out.append(labels[key])
    return np.asarray(out)


# --- the evaluation -------------------------------------------------------------------------------
def evaluate(fp32_model: PathLike, int8_model: PathLike, data: Any, *, limit: Optional[int] = None,
             labels: Optional[PathLike] = None, batch_size: int = 8, seed: int = 0,
             preprocess: Union[PreprocessConfig, Mapping[str, PreprocessConfig], None] = None,
             threads: Optional[int] = None, latency: bool = True) -> EvaluationReport:
    """Run both models over `data` (anything calibrate accepts, or a list of ready feed dicts)."""
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    fp32_path, int8_path = Path(fp32_model), Path(int8_model)
    info = info_from_model(load_model(fp32_path, load_external_data=False), fp32_path)
    ref_session = _session(fp32_path, threads, optimized=False)  # the reference, unfused, as exported
    test_session = _session(int8_path, threads, optimized=True)  # as deployed: onnxruntime fuses Q/DQ
    names = [o.name for o in ref_session.get_outputs()]
    test_names = [o.name for o in test_session.get_outputs()]
    if names != test_names:
        raise ModelError(f"{int8_path}: outputs {test_names} differ from the FP32 model's {names}")
    fixed = info.inputs[0].fixed_batch if info.inputs else None
    iterator, source = _batches(data, info, preprocess, fixed or batch_size, limit, seed, threads)
    accumulators = [_Accumulator(n) for n in names]
    ranks = {s.name: s.rank for s in info.inputs}
    samples, first = 0, None
    for feeds, count in iterator:
        feeds = {n: np.ascontiguousarray(a) for n, a in feeds.items()}
        if first is None:  # ready feed dicts are timed as given; batches from a source per sample
            first = feeds if source is None else _first_sample(feeds, ranks)
        for acc, ref, test in zip(accumulators, _run(ref_session, feeds, fp32_path),
                                  _run(test_session, feeds, int8_path)):
            acc.add(np.asarray(ref), np.asarray(test))
        samples += count
    if samples == 0:
        raise DataError(f"{data}: no usable samples")
    skipped = list(source.log.skipped) if source is not None else []
    label_array = _label_array(read_labels(labels), data, limit, seed, skipped, labels) if labels else None
    if label_array is not None and len(label_array) != samples:
        raise DataError(f"{labels}: {len(label_array)} labels for {samples} samples")
    outputs = [acc.metrics(label_array) for acc in accumulators]
    if label_array is not None and not any(m.accuracy_fp32 is not None for m in outputs):
        raise OptionError("--labels: the model has no classifier-shaped [N, C] output")
    fp32_facts = ModelFacts(str(fp32_path), _size(fp32_path),
                            _latency_ms(_session(fp32_path, threads, True), first, fp32_path) if latency else 0.0)
    int8_facts = ModelFacts(str(int8_path), _size(int8_path),
                            _latency_ms(test_session, first, int8_path) if latency else 0.0)
    passed, verdict = _verdict(outputs)
    return EvaluationReport(samples, outputs, fp32_facts, int8_facts, verdict, passed, skipped)


def _size(path: Path) -> int:
    return path.stat().st_size


def _verdict(outputs: Sequence[OutputMetrics]) -> Tuple[bool, str]:
    worst = min(outputs, key=lambda m: m.cosine)
    agreements = [a for m in outputs for a in (m.top1_agreement, m.sequence_agreement) if a is not None]
    ok = worst.cosine >= VERDICT_COSINE and all(a >= VERDICT_AGREEMENT for a in agreements)
    line = f"lowest output cosine {worst.cosine:.4f} ({worst.name})"
    if agreements:
        line += f", lowest agreement {min(agreements):.1%}"
    if ok:
        return True, f"PASS: INT8 tracks FP32 ({line})"
    return False, (f"REVIEW: INT8 drifts from FP32 ({line}; thresholds: cosine >= {VERDICT_COSINE}, "
                   f"agreement >= {VERDICT_AGREEMENT:.0%}); try another --algo or exclude sensitive layers")
