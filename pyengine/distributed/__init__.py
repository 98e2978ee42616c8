"""Sharded calibration over local processes or a Ray cluster, byte-identical to a single run.

    calibrate_sharded(model, data, engine="local"|"ray", workers=K, ...)  -> CalibrationResult
    calibrate_shard(model, data, i, N, ...)                              -> part StatsBundle (--shard i/N)
    merge_part_files([...])                                              -> StatsBundle (ptqengine merge)

shards.py cuts and merges, worker.py computes one shard, executors.py runs workers, driver.py ties
them together. Ray is optional (pip install .[ray]) and imported only for engine="ray".
"""
from .driver import (ENGINES, ShardedReport, calibrate_shard, calibrate_sharded, make_executor, merge_part_files,
                     remove_shard_files)
from .executors import Executor, LocalExecutor, RayExecutor, ShardFailed
from .shards import (Manifest, ShardPlan, cut_shards, default_shard_size, finish, list_manifest, merge_parts,
                     parse_shard_spec, tree_merge)
from .worker import ShardJob, ShardWorker

__all__ = [
    "ENGINES", "Executor", "LocalExecutor", "Manifest", "RayExecutor", "ShardFailed", "ShardJob",
    "ShardPlan", "ShardWorker", "ShardedReport", "calibrate_shard", "calibrate_sharded", "cut_shards",
    "default_shard_size", "finish", "list_manifest", "make_executor", "merge_part_files", "merge_parts",
    "parse_shard_spec", "remove_shard_files", "tree_merge",
]
