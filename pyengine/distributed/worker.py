"""The per-shard job: one worker builds the model session once, then turns shard ids into statistics.

`ShardWorker(job).run(shard_id)` streams that shard's images through the same batching, session
settings and statistics code as a single `calibrate()` run and returns `(shard_id, part bytes)`, a
serialised part bundle (see shards.py), with no other side effect. Executors keep one ShardWorker per
process or Ray actor; the driver merges, checkpoints and reports.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..atomic import write_bytes_atomic
from ..datasource import DataSource, batches, image_source, prefetch
# Building blocks of pipeline.calibrate(), reused so a shard is processed exactly as a single run
# processes the same images (same session options, batching, statistics and metadata).
from ..pipeline import (ActivationRunner, _batch_size_for, _BatchFolder, _create_session, _expose, _image_plans,
                        _metadata)
from ..model import external_data_locations, info_from_model, load_model
from ..preprocess import PreprocessConfig
from ..stats import TensorStats
from ..statsfile import StatsBundle
from .shards import ShardPlan, part_metadata

log = logging.getLogger(__name__)

Preprocess = Union[PreprocessConfig, Mapping[str, PreprocessConfig], None]


@dataclass(frozen=True)
class CrashOnce:
    """TEST-ONLY fault injection: the worker process exits abruptly (os._exit) when it starts `shard_id`,
    the first time only: `marker` is created just before, and its existence disarms the crash, so the
    retried shard succeeds. Used by tests/test_distributed.py to check retries; never set it otherwise."""

    shard_id: int
    marker: str


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs, picklable and small enough to send to every worker once."""

    model: str
    directory: str
    files: Tuple[str, ...]  # the whole manifest, relative posix paths, sorted
    manifest_sha256: str
    plan: ShardPlan
    batch_size: int = 8
    threads: Optional[int] = None
    preprocess: Preprocess = None
    strict: bool = False
    num_bins: int = 2048
    limit: Optional[int] = None
    seed: int = 0
    crash_once: Optional[CrashOnce] = None  # test-only, see CrashOnce

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
        return self if self.threads is not None else replace(self, threads=threads)


class ShardWorker:
    """Model, image plans and onnxruntime session, built once; run(shard_id) per shard."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        path = Path(job.model)
        proto = load_model(path, load_external_data=False)
        self.info = info_from_model(proto, path)
        self.notes: List[str] = []  # the notes calibrate() gives for the same model and options
        self.run_batch = _batch_size_for(self.info.inputs, job.batch_size, self.notes)
        self.plans = _image_plans(self.info.inputs, job.preprocess)
        if all(p.config.mean is None and p.config.std is None for p in self.plans):
            self.notes.append("no mean/std given: images fed as raw 0-255 pixel values")
        input_names = {s.name for s in self.info.inputs}
        self.node_acts = [n for n in self.info.activations if n not in input_names]
        self.input_acts = [n for n in self.info.activations if n in input_names]
        session = _create_session(_expose(proto, self.node_acts, self.info.activation_dtypes), path,
                                  bool(external_data_locations(proto)), job.threads)
        del proto
        self.runner = ActivationRunner(session, self.node_acts)
        self.fixed_batch = any(s.fixed_batch for s in self.info.inputs)

    def run(self, shard_id: int) -> Tuple[int, bytes]:
        """The shard's part bundle, serialised. Raises PtqError (e.g. an unreadable image with strict)."""
        self._maybe_crash(shard_id)
        job = self.job
        files = job.shard_files(shard_id)
        workers = job.threads or os.cpu_count() or 1
        source = image_source(Path(job.directory), files, self.plans, strict=job.strict, workers=workers,
                              depth=max(2 * self.run_batch, 2 * workers))
        stats = {n: TensorStats(job.num_bins) for n in self.info.activations}
        targets = [stats[n] for n in self.input_acts] + [stats[n] for n in self.node_acts]
        folder = _BatchFolder(self.runner, targets, self.input_acts, job.threads, None, source.total)
        notes = list(self.notes)
        try:
            for feeds, count in prefetch(batches(source.samples(), self.run_batch), depth=2):
                if count != self.run_batch and self.fixed_batch:  # as a single run does
                    notes.append(f"last {count} sample(s) dropped: the model takes exactly {self.run_batch} per run")
                    break
                folder.fold({s.name: np.ascontiguousarray(feeds[s.name]) for s in self.info.inputs}, count)
        finally:
            folder.finish()
        whole = DataSource(source.kind, source.description, source.samples, source.total,
                           lambda: job.manifest_sha256, source.log)
        meta = _metadata(self.info, whole, self.plans, folder.samples, job.num_bins, job.limit, job.seed)
        meta = part_metadata(meta, job.plan, [shard_id], source.log.skipped, notes + source.log.notes,
                             source.log.grayscale)
        log.info("%s: %d samples", job.describe(shard_id), folder.samples)
        return shard_id, StatsBundle(stats, meta).to_bytes()

    def _maybe_crash(self, shard_id: int) -> None:
        crash = self.job.crash_once
        if crash is None or crash.shard_id != shard_id:
            return
        marker = Path(crash.marker)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first attempt wins
        except FileExistsError:
            return
        os.close(fd)
        os._exit(71)


def shard_file(directory: Union[str, Path], shard_id: int) -> Path:
    return Path(directory) / f"shard-{shard_id:05d}.ptqs"


def save_shard(directory: Union[str, Path], shard_id: int, data: bytes) -> Path:
    """Checkpoint a finished shard (atomic: a crash leaves no half-written file for --resume to trust)."""
    path = shard_file(directory, shard_id)
    write_bytes_atomic(path, data)
    return path


# --- process-level entry points (executors call these in worker processes) ------------------------
_PROCESS_WORKER: Dict[str, Any] = {}


def init_process(job: ShardJob) -> None:
    """ProcessPoolExecutor initializer: remember the job; the session is built on the first shard,
    so that a model error reaches the driver as that shard's exception instead of a broken pool."""
    _PROCESS_WORKER.clear()
    _PROCESS_WORKER["job"] = job


def run_in_process(shard_id: int) -> Tuple[int, bytes]:
    worker = _PROCESS_WORKER.get("worker")
    if worker is None:
        worker = _PROCESS_WORKER["worker"] = ShardWorker(_PROCESS_WORKER["job"])
    return worker.run(shard_id)
