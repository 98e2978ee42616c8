"""Calibration end to end: model + data -> per-tensor statistics -> amax, streaming.

The model is run by onnxruntime with every float activation exposed as a graph output (graph
optimisations off, so every tensor keeps its name). Each batch is folded into the native statistics by
one `update_many` call and then dropped, so memory is the model, two batches of activations and the
histograms, whatever the number of samples. Output buffers are bound once per input shape (IOBinding)
and reused, rather than ~30 MB per image allocated and page-faulted afresh every batch; the statistics
of one batch are computed while onnxruntime runs the next.
"""
from __future__ import annotations

import logging
import os
import resource
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import helper

from ._version import __version__
from .algorithms import ALGORITHMS, compute_amax_many, resolve_options
from .datasource import DataSource, Feeds, batches, open_source, prefetch
from .errors import DataError, ModelError, OptionError
from .model import InputSpec, ModelInfo, external_data_locations, info_from_model, load_model
from .preprocess import ImagePlan, PreprocessConfig, config_for, plan_for
from .stats import TensorStats, update_many
from .statsfile import StatsBundle, save_stats as _save_stats

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]


@dataclass
class RunReport:
    samples: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    nonfinite_tensors: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    # Wall time by stage (inference, stats, data_wait, amax, setup) and bytes of activations folded in.
    timings: Dict[str, float] = field(default_factory=dict)
    activation_bytes: int = 0


@dataclass
class CalibrationResult:
    stats: StatsBundle
    algo: str
    algo_options: Dict[str, Any]
    amax: Dict[str, float]  # graph order
    report: RunReport

    def write_trt_cache(self, path: PathLike, version: str = "10.3.0", calibrator: str = "entropy2") -> List[str]:
        """TensorRT calibration cache (scale = amax / 127 per tensor). Returns warnings."""
        from .formats.trt_cache import write_trt_cache

        return write_trt_cache(path, self.amax, version=version, calibrator=calibrator)

    def to_json(self, path: PathLike) -> None:
        from .formats.scales_json import write_scales_json

        write_scales_json(path, self)

    def save_stats(self, path: PathLike) -> None:
        _save_stats(path, self.stats)

    def with_algo(self, algo: str, threads: Optional[int] = None, **options: Any) -> "CalibrationResult":
        """The same statistics, amax re-derived by another algorithm (no inference)."""
        algo, resolved, amax = _amax_for(self.stats, algo, options, threads)
        return CalibrationResult(self.stats, algo, resolved, amax, self.report)


def _resolve_algo(algo: str, options: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    if algo not in ALGORITHMS:
        raise OptionError(f"unknown algorithm {algo!r}; valid: {', '.join(n for n, a in ALGORITHMS.items() if a.symmetric)}")
    if not ALGORITHMS[algo].symmetric:
        raise OptionError(f"algorithm {algo!r} is asymmetric; a calibration result holds symmetric amax only")
    try:
        return algo, resolve_options(algo, dict(options))
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def _amax_for(bundle: StatsBundle, algo: str, options: Mapping[str, Any],
              threads: Optional[int]) -> Tuple[str, Dict[str, Any], Dict[str, float]]:
    algo, resolved = _resolve_algo(algo, options)
    names = list(bundle.tensors)
    try:
        values = compute_amax_many([bundle.tensors[n] for n in names], algo,
                                   threads=threads or os.cpu_count(), **resolved)
    except ValueError as exc:  # e.g. per_channel on per-tensor statistics
        raise OptionError(f"{algo}: {exc}") from None
    return algo, resolved, {n: float(v) for n, v in zip(names, values)}


def result_from_stats(bundle: StatsBundle, algo: str = "entropy", **options: Any) -> CalibrationResult:
    """A result from saved statistics (export): amax by `algo`, report from the metadata."""
    threads = options.pop("threads", None)
    algo, resolved, amax = _amax_for(bundle, algo, options, threads)
    meta = bundle.metadata
    report = RunReport(samples=int(meta.get("samples", 0)),
                       nonfinite_tensors=[n for n, s in bundle.tensors.items() if s.nan_count or s.inf_count])
    return CalibrationResult(bundle, algo, resolved, amax, report)


# Ops whose first output holds exactly the values of their first input, rearranged. The statistics are
# order-independent, so such an output's statistics are a copy of its input's: it need not be exposed
# from onnxruntime nor folded in (transformers are full of Reshape / Transpose).
VALUE_PRESERVING_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def value_preserving_copies(model: onnx.ModelProto, dtypes: Mapping[str, np.dtype]) -> Dict[str, str]:
    """activation -> the activation whose statistics it shares (through chains of value-preserving ops)."""
    copies: Dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in VALUE_PRESERVING_OPS and node.domain in ("", "ai.onnx") and node.input and node.output:
            src, out = node.input[0], node.output[0]
            if out in dtypes and src in dtypes and dtypes[src] == dtypes[out]:
                copies[out] = copies.get(src, src)
    return copies


# --- the onnxruntime side --------------------------------------------------------------------------
def _expose(model: onnx.ModelProto, names: Sequence[str], dtypes: Mapping[str, np.dtype]) -> bytes:
    """The model with `names` added as graph outputs, serialised (the proto is modified in place)."""
    existing = {o.name for o in model.graph.output}
    for n in names:
        if n not in existing:
            model.graph.output.append(helper.make_tensor_value_info(
                n, helper.np_dtype_to_tensor_dtype(dtypes[n]), None))
    return model.SerializeToString()


def _create_session(model_bytes: bytes, model_path: Path, has_external_data: bool, threads: Optional[int]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Optimisations fuse and rename tensors (Conv+BN, Conv+Relu); the activations must keep their names.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads or 0)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if has_external_data:  # the model comes as bytes: tell onnxruntime where its weights live
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(model_path.resolve().parent))
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{model_path}: onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


class ActivationRunner:
    """Runs the session and returns the requested outputs, reusing output buffers per input shape.

    The first batch of a shape is run plainly and its output arrays become the bound buffers for the
    next batches of that shape. If an output's shape depends on the data (onnxruntime then refuses the
    buffer), that shape falls back to plain runs.
    """

    MAX_BUFFER_SETS = 4  # two slots x (the full batch, the one short batch at the end)

    def __init__(self, session: Any, outputs: Sequence[str]) -> None:
        self._session = session
        self._outputs = list(outputs)
        self._buffers: "OrderedDict[tuple, List[np.ndarray]]" = OrderedDict()
        self._unbindable: set = set()

    def run(self, feeds: Feeds, slot: int = 0) -> List[np.ndarray]:
        """Outputs for feeds, in buffers of `slot` (two slots: one being filled, one being read)."""
        shapes = tuple((n, a.shape, a.dtype.str) for n, a in feeds.items())
        key = (slot, shapes)
        buffers = self._buffers.get(key)
        if buffers is not None:
            try:
                return self._run_bound(feeds, buffers)
            except Exception as exc:  # data-dependent output shapes
                log.debug("output buffers not reusable (%s); running without IOBinding", exc)
                del self._buffers[key]
                self._unbindable.add(shapes)
        results = self._run_plain(feeds)
        if shapes not in self._unbindable:
            self._buffers[key] = results
            while len(self._buffers) > self.MAX_BUFFER_SETS:
                self._buffers.popitem(last=False)
        return results

    def _run_plain(self, feeds: Feeds) -> List[np.ndarray]:
        try:
            return self._session.run(self._outputs, feeds)
        except Exception as exc:
            raise DataError(_ort_error_line(exc, feeds)) from None

    def _run_bound(self, feeds: Feeds, buffers: List[np.ndarray]) -> List[np.ndarray]:
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name, buf in zip(self._outputs, buffers):
            binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        self._session.run_with_iobinding(binding)
        return buffers


def _ort_error_line(exc: Exception, feeds: Feeds) -> str:
    shapes = ", ".join(f"{n} [{','.join(map(str, a.shape))}]" for n, a in feeds.items())
    return f"onnxruntime failed on inputs {shapes}: {str(exc).splitlines()[0]}"


# --- the run -----------------------------------------------------------------------------------
def _timed(items, timings: Dict[str, float]):
    """Iterate items, adding the time spent waiting for each to timings["data_wait"]."""
    it = iter(items)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        timings["data_wait"] += time.perf_counter() - t0
        if item is None:
            return
        yield item


def _done_future() -> Future:
    f: Future = Future()
    f.set_result(None)
    return f


class _BatchFolder:
    """Runs batch k+1 through onnxruntime while batch k's activations are folded into the statistics.

    onnxruntime keeps about one core busy on a graph of small unfused ops, so the statistics of the
    previous batch (native threads, GIL released) fill the other. Two output-buffer slots alternate; a
    slot is reused only after its statistics update has finished, so at most two batches are alive.
    """

    OVERLAP = False  # measured slower on 2 cores (52 vs 60 img/s): inference and stats fight for cache

    def __init__(self, runner: ActivationRunner, targets: Sequence[TensorStats], input_acts: Sequence[str],
                 threads: Optional[int], progress: Optional[Progress], total: Optional[int]) -> None:
        self._runner, self._targets, self._input_acts = runner, list(targets), list(input_acts)
        self._threads, self._progress, self._total = threads, progress, total
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptq-stats")
        self._pending: Optional[Tuple[Future, int]] = None
        self._slot = 0
        self.samples, self.nbytes = 0, 0
        self.timings = {"data_wait": 0.0, "inference": 0.0, "stats": 0.0, "stats_wait": 0.0}

    def fold(self, feeds: Feeds, count: int) -> None:
        t0 = time.perf_counter()
        outputs = self._runner.run(feeds, self._slot)
        self.timings["inference"] += time.perf_counter() - t0
        self._wait()  # the previous batch's statistics: its slot is next to be overwritten
        arrays = [feeds[n] for n in self._input_acts] + outputs
        self.nbytes += sum(a.nbytes for a in arrays)
        if self.OVERLAP:
            self._pending = (self._pool.submit(self._update, arrays), count)
            self._slot ^= 1
        else:
            self._update(arrays)
            self._pending = (_done_future(), count)

    def _update(self, arrays: List[np.ndarray]) -> None:
        t0 = time.perf_counter()
        update_many(self._targets, arrays, threads=self._threads)  # one native call per batch
        self.timings["stats"] += time.perf_counter() - t0

    def _wait(self) -> None:
        if self._pending is None:
            return
        future, count = self._pending
        t0 = time.perf_counter()
        self._pending = None
        future.result()
        self.timings["stats_wait"] += time.perf_counter() - t0
        self.samples += count
        if self._progress is not None:
            self._progress(self.samples, self._total)

    def finish(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)



def _batch_size_for(specs: Sequence[InputSpec], batch_size: int, notes: List[str]) -> int:
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    fixed = sorted({s.fixed_batch for s in specs if s.fixed_batch is not None})
    if len(fixed) > 1:
        raise ModelError(f"inputs have different fixed batch sizes: {fixed}")
    if fixed:
        if fixed[0] != batch_size:
            notes.append(f"the model has a fixed batch of {fixed[0]}: fed {fixed[0]} sample(s) per run")
        return fixed[0]
    return batch_size


def _image_plans(specs: Sequence[InputSpec], preprocess) -> List[ImagePlan]:
    return [plan_for(s, config_for(preprocess, s.name)) for s in specs]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def calibrate(model: PathLike, data: Any, *, algo: str = "entropy", algo_options: Optional[Dict[str, Any]] = None,
              batch_size: int = 8, limit: Optional[int] = None, seed: int = 0, threads: Optional[int] = None,
              preprocess: Union[PreprocessConfig, Mapping[str, PreprocessConfig], None] = None,
              strict: bool = False, num_bins: int = 2048,
              progress: Optional[Progress] = None) -> CalibrationResult:
    """Run the model over the data, collect statistics of every float activation, derive amax by algo.

    data: a directory of images (jpg/jpeg/png/bmp/webp, recursive; preprocessed by `preprocess`), a
    .npy/.npz file or a directory of them (npz keys = input names), a list of arrays (single-input
    models), an iterable of feed dicts, or an onnxruntime CalibrationDataReader. Arrays are either one
    sample (no batch dim) or a batch; samples are regrouped into `batch_size` (or the model's fixed
    batch). `limit`: a seeded sample of that many images; for array data, the first `limit` samples.
    Bad data raises DataError, bad options OptionError, an unusable model ModelError.
    """
    start = time.perf_counter()
    auto = algo == "auto"  # statistics do not depend on the algorithm: collect, then choose (analyze.auto_algo)
    if auto and not isinstance(data, (str, Path, list, tuple, np.ndarray)):
        raise OptionError("algo 'auto' reads the data twice (statistics, then samples to measure on): give a "
                          "directory, files or a list, not a one-shot iterable or reader")
    algo, resolved = _resolve_algo("max" if auto else algo, algo_options or {})  # fail on bad options first
    if threads is not None and threads < 1:
        raise OptionError(f"threads must be >= 1, got {threads}")
    if limit is not None and limit < 1:
        raise OptionError(f"limit must be >= 1, got {limit}")
    model_path = Path(model)
    proto = load_model(model_path, load_external_data=False)
    info = info_from_model(proto, model_path)
    notes: List[str] = []
    run_batch = _batch_size_for(info.inputs, batch_size, notes)
    workers = threads or os.cpu_count() or 1
    plans: List[ImagePlan] = []

    def make_plans() -> List[ImagePlan]:
        plans.extend(_image_plans(info.inputs, preprocess))
        return plans

    source = open_source(data, info.inputs, make_plans, limit=limit, seed=seed, strict=strict,
                         workers=workers, depth=max(2 * run_batch, 2 * workers))
    if plans and all(p.config.mean is None and p.config.std is None for p in plans):
        notes.append("no mean/std given: images fed as raw 0-255 pixel values")

    input_names = {s.name for s in info.inputs}
    copies = value_preserving_copies(proto, info.activation_dtypes)
    node_acts = [n for n in info.activations if n not in input_names and n not in copies]
    session = _create_session(_expose(proto, node_acts, info.activation_dtypes), model_path,
                              bool(external_data_locations(proto)), threads)
    del proto  # the session holds its own copy of the weights
    runner = ActivationRunner(session, node_acts)
    stats = {n: TensorStats(num_bins) for n in info.activations}  # graph order, kept by the copies below
    input_acts = [n for n in info.activations if n in input_names]
    targets = [stats[n] for n in input_acts] + [stats[n] for n in node_acts]

    timings = {"setup": time.perf_counter() - start}
    folder = _BatchFolder(runner, targets, input_acts, threads, progress, source.total)
    fixed_batch = any(s.fixed_batch for s in info.inputs)
    try:
        for feeds, count in _timed(prefetch(batches(source.samples(), run_batch), depth=2), folder.timings):
            if count != run_batch and fixed_batch:
                notes.append(f"last {count} sample(s) dropped: the model takes exactly {run_batch} per run")
                break
            folder.fold({s.name: np.ascontiguousarray(feeds[s.name]) for s in info.inputs}, count)
    finally:
        folder.finish()
    timings.update(folder.timings)
    for name, source_name in copies.items():  # same values, so the same statistics, byte for byte
        stats[name] = stats[source_name].copy()
    done, nbytes = folder.samples, folder.nbytes

    if done == 0:
        raise DataError(_nothing_usable(source, data))
    t3 = time.perf_counter()
    bundle = StatsBundle(stats, _metadata(info, source, plans, done, num_bins, limit, seed))
    _, _, amax = _amax_for(bundle, algo, resolved, threads)
    timings["amax"] = time.perf_counter() - t3
    report = _report(source, stats, done, time.perf_counter() - start, notes, timings, nbytes)
    result = CalibrationResult(bundle, algo, resolved, amax, report)
    if auto:
        from .analyze.auto_algo import auto_result

        return auto_result(model_path, result, data, seed=seed, preprocess=preprocess, batch_size=batch_size,
                           threads=threads)
    return result


def _nothing_usable(source: DataSource, data: Any) -> str:
    if source.log.skipped:
        first_file, reason = source.log.skipped[0]
        return f"{data}: no usable samples ({len(source.log.skipped)} skipped; {first_file}: {reason})"
    return f"{source.description}: no samples"


def _metadata(info: ModelInfo, source: DataSource, plans: Sequence[ImagePlan], samples: int, num_bins: int,
              limit: Optional[int], seed: int) -> Dict[str, Any]:
    """Algorithm-independent facts; no time stamps or absolute paths, so equal runs give equal bytes."""
    meta: Dict[str, Any] = {
        "tool": "ptqengine",
        "tool_version": __version__,
        "model_file": info.path.name,
        "model_sha256": info.sha256,
        "inputs": [{"name": s.name, "shape": s.shape, "dtype": s.dtype.name} for s in info.inputs],
        "data_kind": source.kind,
        "manifest_sha256": source.manifest(),
        "samples": samples,
        "skipped": len(source.log.skipped),
        "num_bins": num_bins,
    }
    if plans:
        meta["preprocess"] = {p.input_name: {**p.config.to_dict(), "size": [p.height, p.width],
                                             "layout": p.layout} for p in plans}
        meta["limit"] = limit
        meta["seed"] = seed
    return meta


def _report(source: DataSource, stats: Mapping[str, TensorStats], samples: int, seconds: float,
            notes: List[str], timings: Dict[str, float], nbytes: int) -> RunReport:
    nonfinite = [n for n, s in stats.items() if s.nan_count or s.inf_count]
    if nonfinite:
        log.warning("NaN/Inf in %d activation(s): %s", len(nonfinite), ", ".join(nonfinite))
    gray = source.log.grayscale
    if gray:
        notes.append(f"{len(gray)} grayscale image(s) converted to 3 channels (first: {gray[0]})")
    return RunReport(samples=samples, skipped=list(source.log.skipped), seconds=seconds,
                     samples_per_s=samples / seconds if seconds > 0 else 0.0, peak_rss_mb=_peak_rss_mb(),
                     nonfinite_tensors=nonfinite, notes=notes + source.log.notes, timings=timings,
                     activation_bytes=nbytes)
