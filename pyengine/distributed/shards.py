"""Cutting a calibration set into fixed shards and merging shard statistics without double counting.

The driver lists and sorts the images exactly as a single run does (same --limit/--seed sample), hashes
that manifest, and cuts it into shards of `shard_size` files with ids 0..N-1. Every shard's statistics
travel as a part bundle: the single run's metadata with this part's sample counts, plus a "shards"
entry (which ids it covers, of how many, at which size, and the files it skipped). Merging adds counts
and unions the id sets; two parts that share an id are refused, so a retried shard can never be counted
twice. Once the ids cover 0..N-1 the "shards" entry is dropped: histograms are exact and merging is
order-independent, so the merged bundle is byte-for-byte the bundle a single run writes.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import DataError, FormatError, OptionError
from ..images import find_images, manifest_sha256, sample_files
from ..stats import TensorStats
from ..statsfile import StatsBundle

SHARDS_KEY = "shards"  # metadata entry of a part bundle; absent from a complete one
# Metadata that differs between parts and is combined by merging; everything else must be equal.
_SUMMED = ("samples", "skipped")
MAX_DEFAULT_SHARD_BATCHES = 64  # default shards hold at most 64 batches (512 images at batch 8)
TARGET_SHARDS = 16  # ...and there are about 16 of them, so up to ~8 workers stay busy


@dataclass(frozen=True)
class Manifest:
    """The sorted image list of a run (after the --limit sample) and its hash, as a single run sees it."""

    directory: Path
    files: Tuple[str, ...]  # posix paths relative to directory, sorted
    sha256: str

    def path(self, relative: str) -> Path:
        return self.directory / relative


def list_manifest(data: Union[str, Path], limit: Optional[int] = None, seed: int = 0) -> Manifest:
    """The images a single run over `data` would use, in the order it uses them."""
    if not isinstance(data, (str, Path)):
        raise DataError(f"{data}: sharded calibration reads a directory of images (run a loader script or "
                        "arrays in one process, without --engine / --shard)")
    directory = Path(data)
    if directory.is_file():
        raise DataError(f"{directory}: sharded calibration needs a directory of images, not a file")
    files = sample_files(find_images(directory), limit, seed)  # DataError for missing/empty directory
    if not files:
        raise DataError(f"{directory}: no images found (sharded calibration reads images only, not .npy/.npz)")
    relative = tuple(f.relative_to(directory).as_posix() for f in files)
    return Manifest(directory, relative, manifest_sha256(directory, files))


@dataclass(frozen=True)
class ShardPlan:
    """Fixed shards: shard i holds files [i * size, (i + 1) * size) of the manifest."""

    count: int
    size: int
    total: int

    def bounds(self, shard_id: int) -> Tuple[int, int]:
        if not 0 <= shard_id < self.count:
            raise OptionError(f"shard {shard_id} does not exist (there are {self.count}: 0..{self.count - 1})")
        return shard_id * self.size, min((shard_id + 1) * self.size, self.total)

    def ids(self) -> range:
        return range(self.count)


def default_shard_size(total: int, batch_size: int) -> int:
    """About TARGET_SHARDS shards, whole batches each, at most MAX_DEFAULT_SHARD_BATCHES batches.

    It depends only on the data and the batch, not on the number of workers, so --resume works when
    the worker count changes.
    """
    per_shard = -(-total // TARGET_SHARDS)
    batches = max(1, min(MAX_DEFAULT_SHARD_BATCHES, -(-per_shard // batch_size)))
    return batches * batch_size


def cut_shards(total: int, shard_size: int, batch_size: int = 1) -> ShardPlan:
    """Shards of `shard_size` files, which must be whole batches so every batch is the one a single run feeds.

    (onnxruntime's kernels may round differently for another batch size; keeping batch boundaries
    keeps every activation value, and so the statistics, bit-identical.)
    """
    if shard_size < 1:
        raise OptionError(f"--shard-size must be >= 1, got {shard_size}")
    if shard_size % batch_size:
        raise OptionError(f"--shard-size {shard_size} must be a multiple of the batch size {batch_size}, "
                          "so shards feed the same batches as a single run")
    if total < 1:
        raise DataError("no images to shard")
    return ShardPlan(count=-(-total // shard_size), size=shard_size, total=total)


_SHARD_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard_spec(text: str) -> Tuple[int, int]:
    """'3/8' -> (3, 8): shard 3 of 8, ids counted from 0."""
    match = _SHARD_SPEC.match(text or "")
    if not match:
        raise OptionError(f"--shard: expected i/N (e.g. 0/4), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise OptionError(f"--shard: i must be in 0..N-1, got {text!r}")
    return index, count


def plan_for_count(total: int, count: int, batch_size: int) -> ShardPlan:
    """--shard i/N: N shards of equal whole-batch size (the last one shorter), from the data alone."""
    if count > total:
        raise OptionError(f"--shard: {count} shards for {total} images; use at most {total}")
    batches = -(-total // batch_size)
    size = -(-batches // count) * batch_size
    plan = cut_shards(total, size, batch_size)
    if plan.count != count:
        raise OptionError(f"--shard: {total} images in whole batches of {batch_size} make {plan.count} shards, "
                          f"not {count}; use N <= {plan.count}")
    return plan


# --- part bundles ---------------------------------------------------------------------------------
def part_metadata(complete: Mapping[str, Any], plan: ShardPlan, ids: Iterable[int],
                  skipped_files: Sequence[Tuple[str, str]] = (), notes: Sequence[str] = (),
                  grayscale_files: Sequence[str] = ()) -> Dict[str, Any]:
    """A part's metadata: the single run's (with this part's counts) plus which shards it covers and
    what its run noticed (skipped and grayscale files, notes), for the driver's report."""
    meta = copy.deepcopy(dict(complete))
    meta[SHARDS_KEY] = {"ids": sorted(set(ids)), "count": plan.count, "size": plan.size,
                        "skipped_files": [list(s) for s in skipped_files], "notes": list(notes),
                        "grayscale_files": list(grayscale_files)}
    return meta


def shard_ids(bundle: StatsBundle) -> List[int]:
    """The shard ids a bundle covers; [] for a complete bundle."""
    info = bundle.metadata.get(SHARDS_KEY)
    return list(info["ids"]) if info else []


def is_part(bundle: StatsBundle) -> bool:
    return SHARDS_KEY in bundle.metadata


def _check_part(bundle: StatsBundle, source: str) -> Dict[str, Any]:
    info = bundle.metadata.get(SHARDS_KEY)
    if not isinstance(info, dict) or not {"ids", "count", "size"} <= set(info):
        raise FormatError(f"{source}: not a shard part file (its metadata has no '{SHARDS_KEY}' entry); "
                          "write parts with 'calibrate --shard i/N --save-stats'")
    return info


def merge_parts(a: StatsBundle, b: StatsBundle, a_name: str = "first part", b_name: str = "second part",
                in_place: bool = False) -> StatsBundle:
    """Statistics of both parts; overlapping shard ids, or parts of different runs, are errors.

    The result is a new bundle; `a`'s statistics are reused (and changed) when in_place, else copied.
    """
    info_a, info_b = _check_part(a, a_name), _check_part(b, b_name)
    if (info_a["count"], info_a["size"]) != (info_b["count"], info_b["size"]):
        raise FormatError(f"{b_name}: cut into {info_b['count']} shards of {info_b['size']}, but {a_name} into "
                          f"{info_a['count']} of {info_a['size']}: parts of different runs")
    overlap = sorted(set(info_a["ids"]) & set(info_b["ids"]))
    if overlap:
        raise FormatError(f"{b_name}: shard(s) {_ids_text(overlap)} also in {a_name}; "
                          "merging them would count those images twice")
    _check_same_run(a.metadata, b.metadata, a_name, b_name)
    if list(a.tensors) != list(b.tensors):
        raise FormatError(f"{b_name}: holds other tensors than {a_name}")
    tensors = {name: _merged(stats if in_place else stats.copy(), b.tensors[name], f"{b_name}: tensor {name!r}")
               for name, stats in a.tensors.items()}
    meta = copy.deepcopy(a.metadata)
    for key in _SUMMED:
        meta[key] = int(a.metadata.get(key, 0)) + int(b.metadata.get(key, 0))
    notes_a = list(info_a.get("notes", []))
    meta[SHARDS_KEY] = {
        "ids": sorted(info_a["ids"] + info_b["ids"]), "count": info_a["count"], "size": info_a["size"],
        "skipped_files": list(info_a.get("skipped_files", [])) + list(info_b.get("skipped_files", [])),
        "notes": notes_a + [n for n in info_b.get("notes", []) if n not in notes_a],
        "grayscale_files": list(info_a.get("grayscale_files", [])) + list(info_b.get("grayscale_files", []))}
    return StatsBundle(tensors, meta)


def _merged(stats: TensorStats, other: TensorStats, what: str) -> TensorStats:
    try:
        return stats.merge(other)
    except ValueError as exc:  # a counter would pass its limit, or another configuration
        raise FormatError(f"{what}: {exc}") from None


def _check_same_run(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> None:
    ignored = set(_SUMMED) | {SHARDS_KEY}
    for key in sorted((set(a) | set(b)) - ignored):
        if a.get(key) != b.get(key):
            raise FormatError(f"{b_name}: {key} is {b.get(key)!r} but {a_name} has {a.get(key)!r}: "
                              "parts of different runs (model, data or options differ)")


def missing_ids(bundle: StatsBundle) -> List[int]:
    info = _check_part(bundle, "merged parts")
    return sorted(set(range(info["count"])) - set(info["ids"]))


def finish(bundle: StatsBundle) -> StatsBundle:
    """The complete bundle: every shard id present; the shard bookkeeping dropped.

    Raises DataError naming the missing shards otherwise.
    """
    missing = missing_ids(bundle)
    if missing:
        raise DataError(f"shard(s) {_ids_text(missing)} missing: the merged statistics cover "
                        f"{len(shard_ids(bundle))} of {bundle.metadata[SHARDS_KEY]['count']} shards")
    meta = {k: v for k, v in bundle.metadata.items() if k != SHARDS_KEY}
    return StatsBundle(bundle.tensors, meta)


def skipped_files(bundle: StatsBundle) -> List[Tuple[str, str]]:
    info = bundle.metadata.get(SHARDS_KEY) or {}
    return [(str(f), str(r)) for f, r in info.get("skipped_files", [])]


def run_notes(bundle: StatsBundle) -> List[str]:
    """The notes a single run over the same data would report (deduplicated over shards)."""
    info = bundle.metadata.get(SHARDS_KEY) or {}
    notes = [str(n) for n in info.get("notes", [])]
    gray = info.get("grayscale_files", [])
    if gray:  # worded as pipeline.calibrate words it
        notes.append(f"{len(gray)} grayscale image(s) converted to 3 channels (first: {gray[0]})")
    return notes


def tree_merge(parts: Mapping[int, StatsBundle]) -> StatsBundle:
    """Merge parts pairwise as a fixed binary tree over their keys in ascending order.

    The tree shape depends only on the keys, never on which result arrived first.
    """
    if not parts:
        raise DataError("no shard results to merge")
    level = [(f"shard {k}", parts[k]) for k in sorted(parts)]
    while len(level) > 1:
        merged = []
        for i in range(0, len(level) - 1, 2):
            (name_a, a), (name_b, b) = level[i], level[i + 1]
            merged.append((f"{name_a}+", merge_parts(a, b, name_a, name_b)))
        if len(level) % 2:
            merged.append(level[-1])
        level = merged
    return level[0][1]


class TreeMerger:
    """The same fixed tree as tree_merge, reduced as results arrive so at most ~log2(N) + workers
    bundles are held at once instead of N. Results are keyed by shard id; the first one for an id wins.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        # nodes[(level, index)] covers shard ids [index * 2**level, (index + 1) * 2**level)
        self._nodes: Dict[Tuple[int, int], StatsBundle] = {}
        self._seen: set = set()
        self._height = max(0, (count - 1).bit_length())

    def add(self, shard_id: int, bundle: StatsBundle) -> bool:
        """Fold a shard's result in; False (and nothing changes) when this id was already added."""
        if shard_id in self._seen:
            return False
        if shard_ids(bundle) != [shard_id]:
            raise FormatError(f"shard {shard_id}: result covers shard(s) {shard_ids(bundle)}")
        self._seen.add(shard_id)
        level, index, node = 0, shard_id, bundle
        while level < self._height:
            sibling = index ^ 1
            if (sibling << level) >= self.count:  # no sibling subtree: promote unchanged
                level, index = level + 1, index >> 1
                continue
            other = self._nodes.pop((level, sibling), None)
            if other is None:
                break
            left, right = (node, other) if index < sibling else (other, node)
            node = merge_parts(left, right, f"shards from {(index & ~1) << level}", "their neighbours",
                               in_place=True)
            level, index = level + 1, index >> 1
        self._nodes[(level, index)] = node
        return True

    @property
    def done(self) -> int:
        return len(self._seen)

    def result(self) -> StatsBundle:
        """The root once every id was added (DataError naming the missing shards otherwise)."""
        missing = sorted(set(range(self.count)) - self._seen)
        if missing:
            raise DataError(f"shard(s) {_ids_text(missing)} missing: {len(self._seen)} of {self.count} done")
        return self._nodes[(self._height, 0)]


def _ids_text(ids: Sequence[int], shown: int = 8) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
