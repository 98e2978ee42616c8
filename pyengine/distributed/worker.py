"""The per-shard job: one worker prepares the model once, then turns shard ids into statistics.

`ShardWorker(job).run(shard_id)` streams that shard's images through the collection core's statistics run
(the same session, batching and statistics code as a single `calibrate()`) and returns `(shard_id, part
bytes)`, a serialised part bundle (see shards.py), with no other side effect. Executors keep one
ShardWorker per process or Ray actor; the driver merges, checkpoints and reports.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..atomic import write_bytes_atomic
from ..collect import RunOptions, StatisticsCollector
from ..collect.device import Device
from ..datasource import DataSource, image_source
from ..statsfile import StatsBundle
from .shards import ShardPlan, part_metadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs, picklable and small enough to send to every worker once."""

    model: str
    directory: str
    files: Tuple[str, ...]  # the whole manifest, relative posix paths, sorted
    manifest_sha256: str
    plan: ShardPlan
    options: RunOptions = RunOptions()
    # Called with the shard id in the worker before it starts a shard (fault injection in tests).
    before_shard: Optional[Callable[[int], None]] = None

    def shard_files(self, shard_id: int) -> List[Path]:
        lo, hi = self.plan.bounds(shard_id)
        return [Path(self.directory) / f for f in self.files[lo:hi]]

    def describe(self, shard_id: int) -> str:
        """'shard 3 (8 images: a.jpg .. h.jpg)' for error messages."""
        lo, hi = self.plan.bounds(shard_id)
        names = self.files[lo:hi]
        span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        return f"shard {shard_id} ({len(names)} image{'s' if len(names) != 1 else ''} in {self.directory}: {span})"

    def with_threads(self, threads: Optional[int]) -> "ShardJob":
        if self.options.threads is not None:
            return self
        return replace(self, options=self.options.but(threads=threads))

    def on_device(self, device: Device) -> "ShardJob":
        return replace(self, options=self.options.but(device=device))


class ShardWorker:
    """The statistics collector, built once; run(shard_id) per shard."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.collector = StatisticsCollector(job.model, job.options)
        self.collector.image_plans()  # an input that cannot take images fails here, once

    def run(self, shard_id: int) -> Tuple[int, bytes]:
        """The shard's part bundle, serialised. Raises PtqError (e.g. an unreadable image with strict)."""
        job = self.job
        if job.before_shard is not None:
            job.before_shard(shard_id)
        o = job.options
        workers = o.threads or os.cpu_count() or 1
        source = image_source(Path(job.directory), job.shard_files(shard_id), self.collector.image_plans(),
                              strict=o.strict, workers=workers, depth=max(2 * o.batch_size, 2 * workers))
        collected = self.collector.collect(source)
        whole = DataSource(source.kind, source.description, source.samples, source.total,
                           lambda: job.manifest_sha256, source.log)
        meta = part_metadata(self.collector.metadata(whole, collected.samples), job.plan, [shard_id],
                             source.log.skipped, collected.notes + source.log.notes, source.log.grayscale)
        log.info("%s: %d samples", job.describe(shard_id), collected.samples)
        return shard_id, StatsBundle(collected.stats, meta).to_bytes()


def shard_file(directory: Union[str, Path], shard_id: int) -> Path:
    return Path(directory) / f"shard-{shard_id:05d}.ptqs"


def save_shard(directory: Union[str, Path], shard_id: int, data: bytes) -> Path:
    """Checkpoint a finished shard (atomic: a crash leaves no half-written file for --resume to trust)."""
    path = shard_file(directory, shard_id)
    write_bytes_atomic(path, data)
    return path


def worker_device(device: Device, worker_index: int, gpus_per_worker: float, gpu_count: int) -> Device:
    """The GPU of local worker k: with --gpus-per-worker g, worker k takes GPU floor(k * g) counted from
    the requested one (so g=1 gives each worker its own, g=0.5 two workers per GPU); without it every
    worker shares the requested device."""
    if not device.is_cuda or gpus_per_worker <= 0 or gpu_count <= 1:
        return device
    return Device("cuda", (device.index + int(worker_index * gpus_per_worker)) % gpu_count)


# --- process-level entry points (executors call these in worker processes) ------------------------
_PROCESS_WORKER: Dict[str, Any] = {}


def init_process(job: ShardJob, counter: Any = None, gpus_per_worker: float = 0.0) -> None:
    """ProcessPoolExecutor initializer: remember the job (on this worker's device); the collector is built
    on the first shard, so that a model error reaches the driver as that shard's exception instead of a
    broken pool."""
    _PROCESS_WORKER.clear()
    if counter is not None and job.options.device.is_cuda:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        from ..gpu import device_count

        job = job.on_device(worker_device(job.options.device, index, gpus_per_worker, device_count()))
    _PROCESS_WORKER["job"] = job


def run_in_process(shard_id: int) -> Tuple[int, bytes]:
    worker = _PROCESS_WORKER.get("worker")
    if worker is None:
        worker = _PROCESS_WORKER["worker"] = ShardWorker(_PROCESS_WORKER["job"])
    return worker.run(shard_id)
