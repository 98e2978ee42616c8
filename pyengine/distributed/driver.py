"""The driver of a sharded calibration: list, cut, dispatch, keep the first result per shard, merge.

`calibrate_sharded()` returns the same CalibrationResult as `calibration.calibrate()`, with statistics
byte-identical to a single run on the same data; `calibrate_shard()` computes one part for external
schedulers (`--shard i/N`), and `merge_part_files()` combines parts (`ptqengine merge`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..collect import RunOptions, check_device, run_batch_size
from ..errors import DataError, FormatError, OptionError
from ..model import inspect_model
from ..result import CalibrationResult, RunReport, peak_rss_mb, resolve_algo, result_from_stats
from ..statsfile import StatsBundle, load_stats
from .executors import Executor, LocalExecutor, RayExecutor
from .shards import (ShardPlan, TreeMerger, cut_shards, default_shard_size, finish, list_manifest, merge_parts,
                     plan_for_count, run_notes, shard_ids, skipped_files)
from .worker import ShardJob, ShardWorker, save_shard, shard_file

log = logging.getLogger(__name__)


@dataclass
class ShardedReport(RunReport):
    """RunReport plus how the run was cut and which shards were resumed or computed here."""

    shard_count: int = 0
    shard_size: int = 0
    resumed: List[int] = field(default_factory=list)
    computed: List[int] = field(default_factory=list)

PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]
ENGINES = ("local", "ray")


def make_executor(engine: str = "local", *, workers: int = 2, max_retries: int = 2, ray_address: Optional[str] = None,
                  gpus_per_worker: float = 0.0) -> Executor:
    if engine == "local":
        if ray_address:
            raise OptionError("--ray-address needs --engine ray")
        return LocalExecutor(workers, max_retries, gpus_per_worker=gpus_per_worker)
    if engine == "ray":
        return RayExecutor(workers, max_retries, address=ray_address, gpus_per_worker=gpus_per_worker)
    raise OptionError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")


def make_job(model: PathLike, data: PathLike, plan_shards: Callable[[int, int], ShardPlan],
             options: RunOptions = RunOptions(), before_shard: Optional[Callable[[int], None]] = None) -> ShardJob:
    check_device(options.device)
    run_batch = run_batch_size(inspect_model(model).inputs, options.batch_size)
    manifest = list_manifest(data, options.limit, options.seed)
    plan = plan_shards(len(manifest.files), run_batch)
    return ShardJob(model=str(model), directory=str(manifest.directory), files=manifest.files,
                    manifest_sha256=manifest.sha256, plan=plan, options=options, before_shard=before_shard)


def _resumable(directory: Path, job: ShardJob) -> Iterator[Tuple[int, StatsBundle]]:
    """Checkpointed shards of this very run in `directory`, one at a time (others ignored, with a warning)."""
    for shard_id in job.plan.ids():
        path = shard_file(directory, shard_id)
        if not path.is_file():
            continue
        try:
            bundle = load_stats(path)
        except FormatError as exc:
            log.warning("ignoring %s: %s", path, exc)
            continue
        meta, info = bundle.metadata, bundle.metadata.get("shards") or {}
        same = (meta.get("manifest_sha256") == job.manifest_sha256 and meta.get("num_bins") == job.options.num_bins
                and info.get("count") == job.plan.count and info.get("size") == job.plan.size
                and shard_ids(bundle) == [shard_id])
        if not same:
            log.warning("ignoring %s: it belongs to another run (data, shards or bins differ)", path)
            continue
        yield shard_id, bundle


def collect_sharded(job: ShardJob, executor: Executor, *, resume_dir: Optional[PathLike] = None,
                    progress: Optional[Progress] = None) -> Tuple[StatsBundle, Dict[str, Any]]:
    """Run every shard of job on executor; (complete bundle, run facts) with the first result per shard."""
    merger = TreeMerger(job.plan.count)
    done_images = 0
    resumed: List[int] = []
    computed: List[int] = []
    if resume_dir is not None:
        Path(resume_dir).mkdir(parents=True, exist_ok=True)
        for shard_id, bundle in _resumable(Path(resume_dir), job):  # folded in one by one: bounded memory
            merger.add(shard_id, bundle)
            resumed.append(shard_id)
            lo, hi = job.plan.bounds(shard_id)
            done_images += hi - lo
    if progress is not None:
        progress(done_images, job.plan.total)

    def on_result(shard_id: int, data: bytes) -> None:
        nonlocal done_images
        bundle = StatsBundle.from_bytes(data, f"shard {shard_id} result")
        if not merger.add(shard_id, bundle):
            log.info("shard %d: duplicate result (a retried worker) dropped", shard_id)
            return
        computed.append(shard_id)
        if resume_dir is not None:
            save_shard(resume_dir, shard_id, data)
        lo, hi = job.plan.bounds(shard_id)
        done_images += hi - lo
        if progress is not None:
            progress(done_images, job.plan.total)

    already = set(resumed)
    todo = [i for i in job.plan.ids() if i not in already]
    if todo:
        executor.run(job, todo, on_result)
    merged = merger.result()
    facts = {"resumed": resumed, "computed": sorted(computed), "skipped_files": skipped_files(merged),
             "notes": run_notes(merged),
             "startup_seconds": executor.startup_seconds if todo else 0.0}
    bundle = finish(merged)
    if int(bundle.metadata.get("samples", 0)) == 0:
        raise DataError(f"{job.directory}: no usable samples ({len(facts['skipped_files'])} skipped)")
    return bundle, facts


def calibrate_sharded(model: PathLike, data: PathLike, *, engine: str = "local", workers: int = 2,
                      ray_address: Optional[str] = None, gpus_per_worker: float = 0.0,
                      shard_size: Optional[int] = None, max_retries: int = 2,
                      resume_dir: Optional[PathLike] = None, executor: Optional[Executor] = None,
                      algo: str = "entropy", algo_options: Optional[Dict[str, Any]] = None,
                      progress: Optional[Progress] = None, before_shard: Optional[Callable[[int], None]] = None,
                      **run_options: Any) -> CalibrationResult:
    """calibrate() over shards on `workers` processes (engine "local") or Ray actors (engine "ray").

    Run options as calibrate() takes them (batch_size, limit, seed, threads, preprocess, strict, num_bins,
    device). The statistics, and so every output written from them, are byte-identical to a single run.
    resume_dir: checkpoint each finished shard there and skip the shards already there.
    before_shard(shard_id) runs in the worker before each shard (fault injection in tests).
    """
    start = time.perf_counter()
    resolve_algo(algo, algo_options or {})  # bad options fail before any work
    options = RunOptions(**run_options)
    executor = executor or make_executor(engine, workers=workers, max_retries=max_retries,
                                         ray_address=ray_address, gpus_per_worker=gpus_per_worker)

    def plan(total: int, run_batch: int) -> ShardPlan:
        return cut_shards(total, shard_size or default_shard_size(total, run_batch), run_batch)

    job = make_job(model, data, plan, options, before_shard)
    log.info("%s engine: %d images in %d shards of %d", engine, job.plan.total, job.plan.count, job.plan.size)
    bundle, facts = collect_sharded(job, executor, resume_dir=resume_dir, progress=progress)
    t_amax = time.perf_counter()
    result = result_from_stats(bundle, algo, threads=options.threads, **(algo_options or {}))
    seconds = time.perf_counter() - start
    notes = facts["notes"]
    if facts["resumed"]:
        notes.append(f"resumed: {len(facts['resumed'])} of {job.plan.count} shards were already in {resume_dir}")
    samples = result.report.samples
    result.report = ShardedReport(
        samples=samples, skipped=facts["skipped_files"], seconds=seconds,
        samples_per_s=samples / seconds if seconds > 0 else 0.0, peak_rss_mb=peak_rss_mb(),
        nonfinite_tensors=result.report.nonfinite_tensors, notes=notes,
        timings={"startup": facts["startup_seconds"], "amax": time.perf_counter() - t_amax},
        shard_count=job.plan.count, shard_size=job.plan.size, resumed=facts["resumed"], computed=facts["computed"])
    return result


def calibrate_shard(model: PathLike, data: PathLike, index: int, count: int, **run_options: Any) -> StatsBundle:
    """Shard `index` of `count` (--shard i/N) in this process: a part bundle for `merge`."""
    job = make_job(model, data, lambda total, run_batch: plan_for_count(total, count, run_batch),
                   RunOptions(**run_options))
    _, data_bytes = ShardWorker(job).run(index)
    return StatsBundle.from_bytes(data_bytes, f"shard {index}")


def merge_part_files(paths: Sequence[PathLike], partial: bool = False) -> StatsBundle:
    """Merge part files (any number of shards each), holding two at a time.

    Histograms are exact, so the order of the files does not change a byte of the result. Complete
    (every id covered): the single run's statistics. With partial, a bigger part instead.
    """
    if not paths:
        raise OptionError("merge: no part files given")
    owner: Dict[int, str] = {}  # shard id -> the file that brought it
    merged: Optional[StatsBundle] = None
    for path in paths:
        bundle = load_stats(path)
        ids = shard_ids(bundle)
        if not ids:
            raise FormatError(f"{path}: not a shard part file (a complete statistics file needs no merge)")
        for shard_id in ids:
            if shard_id in owner:
                raise FormatError(f"{path}: shard {shard_id} also in {owner[shard_id]}; "
                                  "merging them would count those images twice")
            owner[shard_id] = str(path)
        merged = bundle if merged is None else merge_parts(merged, bundle, owner[min(shard_ids(merged))], str(path),
                                                           in_place=True)
    assert merged is not None
    info = merged.metadata["shards"]
    complete = set(info["ids"]) == set(range(info["count"]))
    return merged if partial and not complete else finish(merged)


def remove_shard_files(directory: PathLike, count: int) -> None:
    """Delete the checkpoints of a finished run (and the directory when it is left empty)."""
    d = Path(directory)
    for shard_id in range(count):
        shard_file(d, shard_id).unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass  # not empty: other files are not ours to remove
