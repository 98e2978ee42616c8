"""Statistics runs: a model prepared once, then any data source folded into per-tensor statistics.

`StatisticsCollector(model, options)` loads the model, decides the observed tensors, builds the session
and the image plans once; `collect(source)` streams the source through it and returns the statistics of
every activation (graph order). `calibrate`, the shard workers and Horizon's kit all collect this way,
so a shard is processed exactly as a single run processes the same samples. Memory is the model, two
batches of activations and the histograms, whatever the number of samples.

On the CPU each batch is folded by one native `update_many` call. On a CUDA device the node outputs stay
on the GPU and are folded there by ptqengine.gpu (counts come to the host once, at the end); the graph
inputs, already on the host, are folded on the CPU. Both give the same bytes.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .._version import __version__
from ..datasource import DataSource, first_samples, open_source
from ..errors import DataError, OptionError
from ..formats.convergence import RECORD_KEY
from ..model import ModelInfo, constant_ranges, file_sha256, info_from_model, load_model
from ..preprocess import RAW_PIXELS_NOTE, ImagePlan, plans_for, raw_pixels
from ..stats import TensorStats, update_many
from ..statsfile import CONSTANTS_KEY, StatsBundle, load_stats
from .convergence import HalfFold, SplitHalfTracker, half_of
from .device import check_device
from .budget import check_run_memory
from .feed import BatchStream, run_batch_size
from .observe import Observation, expose, plan_observation
from .options import RunOptions
from .runner import Runner
from .session import Purpose, create_session

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]
AxisPolicy = Callable[[str, int], Optional[int]]  # (tensor, rank) -> channel axis for per-channel min/max


@dataclass
class Collected:
    """What one statistics run produced."""

    stats: Dict[str, TensorStats]  # every activation, graph order
    samples: int
    source: DataSource
    notes: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    activation_bytes: int = 0


class _HostFold:
    """Folds each batch into CPU statistics: one native call per batch."""

    def __init__(self, targets: Sequence[TensorStats], threads: Optional[int]) -> None:
        self.targets, self.threads = list(targets), threads

    def add(self, arrays: Sequence[Any], slot: int = 0) -> None:
        update_many(self.targets, arrays, threads=self.threads)

    def wait(self, slot: int) -> None:
        """Nothing to wait for: the host update has returned."""

    def finish(self) -> List[TensorStats]:
        return self.targets


class _DeviceFold:
    """Graph inputs (host arrays) on the CPU, node outputs (device views) on the GPU."""

    def __init__(self, targets: Sequence[TensorStats], names: Sequence[str], host_count: int, device_index: int,
                 threads: Optional[int]) -> None:
        from ..gpu import DeviceStatsSet

        self.host = _HostFold(targets[:host_count], threads)
        self.device = DeviceStatsSet([(t.num_bins, t.grid_bins, t.axis) for t in targets[host_count:]],
                                     device_id=device_index, names=list(names[host_count:]))
        self.host_count = host_count
        self.pending: Dict[int, Any] = {}  # slot -> the event after the kernels that read it

    def add(self, arrays: Sequence[Any], slot: int = 0) -> None:
        if self.host_count:
            self.host.add(arrays[:self.host_count])
        self.device.update(arrays[self.host_count:])
        self.pending[slot] = self.device.record_event()

    def wait(self, slot: int) -> None:
        """Before a slot's buffers are overwritten: its last batch's kernels must have read them."""
        event = self.pending.pop(slot, None)
        if event is not None:
            event.synchronize()

    def finish(self) -> List[TensorStats]:
        return self.host.finish() + self.device.to_host()


class StatisticsCollector:
    """A model ready for statistics runs (see the module docstring)."""

    def __init__(self, model: PathLike, options: RunOptions, axis_policy: Optional[AxisPolicy] = None) -> None:
        start = time.perf_counter()
        self.path = Path(model)
        self.options = options
        self.axis_policy = axis_policy
        check_device(options.device)
        proto = load_model(self.path, load_external_data=False)
        self.info: ModelInfo = info_from_model(proto, self.path)
        self.observation: Observation = plan_observation(proto, self.info)
        self._check_memory(self.info.activation_shapes)
        session = create_session(expose(proto, self.observation), str(self.path), purpose=Purpose.OBSERVE,
                                 device=options.device, threads=options.threads,
                                 external_data_dir=self.path.resolve().parent)
        self.constants = constant_ranges(proto, self.path.resolve().parent)  # a TensorRT cache lists them too
        del proto  # the session holds its own copy of the weights
        self.runner = Runner(session, self.observation.exposed, options.device,
                             keep_on_device=options.device.is_cuda, origin=str(self.path))
        self._plans: Optional[List[ImagePlan]] = None
        self.setup_seconds = time.perf_counter() - start

    # --- data ------------------------------------------------------------------------------------
    def image_plans(self) -> List[ImagePlan]:
        """Preprocessing of each input (raises OptionError when an input cannot take images)."""
        if self._plans is None:
            plans = plans_for(self.info.inputs, self.options.preprocess)
            # a dynamic height / width is known now (--size): check again with the inputs' real size
            sizes = {p.input_name: ["N", p.channels, p.height, p.width] for p in plans}
            self._check_memory({**self.info.activation_shapes, **sizes})
            self._plans = plans
        return self._plans

    def _check_memory(self, shapes: Dict[str, List[Any]]) -> None:
        o = self.options
        check_run_memory(self.observation, shapes, run_batch_size(self.info.inputs, o.batch_size), o.num_bins,
                         str(self.path), host_activations=not o.device.is_cuda)

    @property
    def used_image_plans(self) -> List[ImagePlan]:
        return self._plans or []

    def open(self, data: Any, tracker: Optional[SplitHalfTracker] = None) -> DataSource:
        """The source for `data` (anything calibrate accepts), with this run's --limit / --seed / --strict.

        With a convergence tracker: images in a seeded random order, at most its max_images of them."""
        o = self.options
        workers = o.threads or os.cpu_count() or 1
        source = open_source(data, self.info.inputs, self.image_plans, limit=o.limit, seed=o.seed, strict=o.strict,
                             workers=workers, depth=max(2 * o.batch_size, 2 * workers), shuffle=tracker is not None)
        return first_samples(source, tracker.options.max_images) if tracker is not None else source

    # --- the run -----------------------------------------------------------------------------------
    def collect(self, source: DataSource, progress: Optional[Progress] = None,
                tracker: Optional[SplitHalfTracker] = None) -> Collected:
        """Statistics of every activation over `source`. DataError when no sample was usable.

        With a tracker: batches of one half each, folded into that half's statistics, checkpoints as they fall
        due (ptqengine.collect.convergence), each run beside the next batch's inference (it only reads the halves,
        which that batch is folded into after it); reading stops early when the tracker says so."""
        start = time.perf_counter()
        notes: List[str] = []
        stream = BatchStream(source, self.info.inputs, self.options.batch_size, notes,
                             group=None if tracker is None else half_of)
        obs = self.observation
        fold = None
        timings = {"inference": 0.0, "stats": 0.0}
        nbytes, slot = 0, 0
        samples, checkpoint = 0, None  # samples folded in; a checkpoint running beside the next inference
        if progress is not None:
            progress(0, source.total)
        for batch in stream:
            t0 = time.perf_counter()
            if fold is not None:
                fold.wait(slot)  # device statistics of the batch before last may still read this slot
            outputs = self.runner.run(batch.feeds, slot)
            t1 = time.perf_counter()
            if checkpoint is not None and tracker.stop(checkpoint):
                break  # this batch is left out: the statistics are those the checkpoint judged
            arrays = [batch.feeds[n] for n in obs.inputs] + list(outputs)
            if fold is None:
                fold = self._fold(arrays) if tracker is None else HalfFold(self._fold, tracker)
            if tracker is None:
                fold.add(arrays, slot)
            else:
                fold.add(arrays, slot, batch.group, batch.count)
            samples += batch.count
            timings["inference"] += t1 - t0
            timings["stats"] += time.perf_counter() - t1
            nbytes += sum(_nbytes(a) for a in arrays)
            if self.options.device.is_cuda:
                slot ^= 1
            if progress is not None:
                progress(samples, source.total)
            if tracker is not None:
                checkpoint = tracker.after_batch(samples, fold)
        if checkpoint is not None:
            tracker.stop(checkpoint)
        if fold is None or samples == 0:
            raise DataError(_nothing_usable(source))
        t2 = time.perf_counter()
        folded = dict(zip(obs.observed, fold.finish()))
        timings["stats"] += time.perf_counter() - t2
        stats: Dict[str, TensorStats] = {}
        for name in obs.activations:  # graph order; a copy has the same values, so the same bytes
            stats[name] = folded[name] if name in folded else folded[obs.copies[name]].copy()
        timings["data_wait"] = stream.data_wait
        timings["collect"] = time.perf_counter() - start
        plans = self.used_image_plans
        if plans and raw_pixels([p.config for p in plans]):
            notes.insert(0, RAW_PIXELS_NOTE)
        if tracker is not None:
            timings["convergence"], timings["convergence_wait"] = tracker.seconds, tracker.waited
        return Collected(stats, samples, source, stream.notes, timings, nbytes)

    def _fold(self, arrays: Sequence[Any]):
        """The statistics objects, made at the first batch (per-channel axes need the ranks)."""
        targets = [TensorStats(self.options.num_bins, self._axis(name, _ndim(a)))
                   for name, a in zip(self.observation.observed, arrays)]
        if self.options.device.is_cuda:
            return _DeviceFold(targets, self.observation.observed, len(self.observation.inputs),
                               self.options.device.index, self.options.threads)
        return _HostFold(targets, self.options.threads)

    def _axis(self, name: str, ndim: int) -> Optional[int]:
        return None if self.axis_policy is None else self.axis_policy(name, ndim)

    # --- what the run was ----------------------------------------------------------------------------
    def metadata(self, source: DataSource, samples: int) -> Dict[str, Any]:
        """Algorithm-independent facts; no time stamps or absolute paths, so equal runs give equal bytes."""
        info, o = self.info, self.options
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
            "num_bins": o.num_bins,
        }
        if self.constants:
            meta[CONSTANTS_KEY] = [[name, value] for name, value in self.constants.items()]
        plans = self.used_image_plans
        if plans:
            meta["preprocess"] = {p.input_name: {**p.config.to_dict(), "size": [p.height, p.width],
                                                 "layout": p.layout} for p in plans}
            meta["limit"] = o.limit
            meta["seed"] = o.seed
        return meta


def _ndim(array: Any) -> int:
    return len(array.shape)


def _nbytes(array: Any) -> int:
    nbytes = getattr(array, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    size = 1
    for d in array.shape:
        size *= int(d)
    return size * array.dtype.itemsize


def _nothing_usable(source: DataSource) -> str:
    if source.log.skipped:
        first_file, reason = source.log.skipped[0]
        return f"{source.description}: no usable samples ({len(source.log.skipped)} skipped; {first_file}: {reason})"
    return f"{source.description}: no samples"


def collect_bundle(model: PathLike, data: Any, options: RunOptions, *, progress: Optional[Progress] = None,
                   axis_policy: Optional[AxisPolicy] = None,
                   tracker: Optional[SplitHalfTracker] = None) -> Tuple[StatsBundle, Collected]:
    """One statistics run over `data`: the bundle (statistics + metadata) and what the run noticed.

    With a convergence tracker the metadata also holds its record (ptqengine.formats.convergence)."""
    if tracker is not None and options.device.is_cuda:
        raise OptionError("convergence is measured on the CPU statistics path only: use --device cpu")
    collector = StatisticsCollector(model, options, axis_policy)
    source = collector.open(data, tracker)
    if tracker is not None:
        obs = collector.observation
        index = {name: i for i, name in enumerate(obs.observed)}
        tracker.bind([(n, index[obs.copies.get(n, n)]) for n in obs.activations], shuffled=source.kind == "images")
    collected = collector.collect(source, progress, tracker)
    collected.timings["setup"] = collector.setup_seconds
    metadata = collector.metadata(source, collected.samples)
    if tracker is not None:
        metadata[RECORD_KEY] = tracker.record()
    return StatsBundle(collected.stats, metadata), collected


def statistics_for(model: PathLike, data: Any, stats: Union[PathLike, StatsBundle, None], options: RunOptions, *,
                   notes: List[str], progress: Optional[Progress] = None,
                   axis_policy: Optional[AxisPolicy] = None) -> StatsBundle:
    """Saved statistics (a .ptqs path or a bundle) when given, else a statistics run over `data`.

    Saved statistics taken on another model file are used with a note (their tensors may not match)."""
    if stats is None:
        bundle, collected = collect_bundle(model, data, options, progress=progress, axis_policy=axis_policy)
        notes.extend(collected.notes)
        return bundle
    bundle = stats if isinstance(stats, StatsBundle) else load_stats(stats)
    recorded = bundle.metadata.get("model_sha256")
    if recorded and recorded != file_sha256(Path(model), load_model(Path(model), load_external_data=False)):
        notes.append(f"the statistics were collected on another model file ({bundle.metadata.get('model_file')}); "
                     "tensors missing from them get no Q/DQ")
    return bundle
