"""Calibration data sources, all reduced to one stream: batches of feeds for the model.

Accepted: a directory of images, a .npy/.npz file or a directory of them, a list of arrays, an iterable
of feed dicts, an onnxruntime CalibrationDataReader, a Polygraphy-style loader script (ptqengine.loader_script). Every source yields keyed samples: (identity, input
name -> one sample without the batch dim); the identity (an image's path relative to the data directory,
or an array file / feed and the index in it) names the sample in reports and stays the same whatever the
order or batching. Images are decoded by a thread pool (PIL releases the GIL while decoding), at most
`depth` ahead; ptqengine.collect.feed stacks samples into batches and runs the source in a producer thread,
so data loading overlaps inference while memory stays bounded.
"""
from __future__ import annotations

import hashlib
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError, PtqError
from .images import (ARRAY_SUFFIXES, IMAGE_SUFFIXES, find_arrays, image_files, is_image_list, manifest_sha256,
                     sample_files, shuffled)
from .loader_script import LoaderScript
from .model import InputSpec
from .preprocess import ImagePlan, is_grayscale, open_image, preprocess_pil

log = logging.getLogger(__name__)

Sample = Dict[str, np.ndarray]
Feeds = Dict[str, np.ndarray]
KeyedSample = Tuple[str, Sample]


@dataclass
class SourceLog:
    """What a source noticed while reading: filled in by the producer, read after the run."""

    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    grayscale: List[str] = field(default_factory=list)


@dataclass
class DataSource:
    """A stream of samples plus what is known about it up front."""

    kind: str  # "images", "arrays", "feeds", "reader"
    description: str
    samples: Callable[[], Iterator[KeyedSample]]
    total: Optional[int]
    manifest: Callable[[], str]  # valid after the samples were consumed
    log: SourceLog


# --- checking and splitting feeds ----------------------------------------------------------------
def _cast(name: str, array: Any, spec: InputSpec, origin: str) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == spec.dtype:
        return a
    # float -> float and int -> int convert; int data for a float input is refused, because it is
    # usually raw pixels that missed their normalisation.
    same_family = (a.dtype.kind == "f" and spec.dtype.kind == "f") or \
        (a.dtype.kind in "iub" and spec.dtype.kind in "iub" and np.can_cast(a.dtype, spec.dtype, "same_kind"))
    if not same_family:
        raise DataError(f"{origin}: input {name!r} expects {spec.dtype}, got {a.dtype} "
                        "(convert the data to the input's type)")
    return a.astype(spec.dtype)


def _check_shape(spec: InputSpec, shape: Tuple[int, ...], origin: str) -> None:
    """shape: a batch of spec's samples, or one sample without the batch dim."""
    sample = shape if len(shape) == spec.rank - 1 and spec.rank > 0 else shape[1:]
    expected = spec.shape[1:]
    ok = len(shape) in (spec.rank, spec.rank - 1) and len(sample) == len(expected) and \
        all(not isinstance(e, int) or e <= 0 or e == g for e, g in zip(expected, sample))
    if not ok:
        raise DataError(f"{origin}: input {spec.name!r} expects shape {spec.shape_text()}, "
                        f"got [{','.join(str(d) for d in shape)}]")


def split_feed(feed: Mapping[str, Any], specs: Sequence[InputSpec], origin: str) -> Iterator[KeyedSample]:
    """One feed dict (batched arrays, or single samples without the batch dim) -> keyed samples."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feed]
    if missing:
        raise DataError(f"{origin}: no data for input {missing[0]!r} (got keys: {', '.join(map(str, feed)) or 'none'})")
    extra = [k for k in feed if k not in names]
    if extra:
        raise DataError(f"{origin}: {extra[0]!r} is not a model input (inputs: {', '.join(names)})")
    per_input: Dict[str, np.ndarray] = {}
    count = None
    for spec in specs:
        a = _cast(spec.name, feed[spec.name], spec, origin)
        _check_shape(spec, a.shape, origin)
        if a.ndim == spec.rank - 1 and spec.rank > 0:
            a = a[np.newaxis]
        if count is not None and a.shape[0] != count:
            raise DataError(f"{origin}: inputs have different batch sizes ({count} and {a.shape[0]} for {spec.name!r})")
        count = a.shape[0]
        per_input[spec.name] = a
    for i in range(count or 0):
        yield f"{origin}[{i}]", {n: a[i] for n, a in per_input.items()}


def _hash_samples(samples: Iterator[KeyedSample], digest: "hashlib._Hash") -> Iterator[KeyedSample]:
    """Pass samples through, hashing name, dtype, shape and bytes of each (array data manifest)."""
    for key, sample in samples:
        for name in sorted(sample):
            a = np.ascontiguousarray(sample[name])
            digest.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
            digest.update(memoryview(a).cast("B"))
        yield key, sample


def _array_source(kind: str, description: str, feeds: Callable[[], Iterator[Tuple[Mapping[str, Any], str]]],
                  specs: Sequence[InputSpec], total: Optional[int] = None) -> DataSource:
    digest = hashlib.sha256()

    def samples() -> Iterator[KeyedSample]:
        for feed, origin in feeds():
            yield from _hash_samples(split_feed(feed, specs, origin), digest)

    return DataSource(kind, description, samples, total, digest.hexdigest, SourceLog())


# --- array sources -------------------------------------------------------------------------------
def _single_input(specs: Sequence[InputSpec], what: str) -> InputSpec:
    if len(specs) != 1:
        raise DataError(f"{what} can only feed a single-input model; this one has inputs "
                        f"{', '.join(s.name for s in specs)}: use .npz files or feed dicts")
    return specs[0]


def available_memory() -> Optional[int]:
    """Bytes this process may still allocate: the smallest of the system's available memory, what is left
    under a container's memory limit (cgroup v2) and what is left under an address-space limit
    (ulimit -v); None where none can be read."""
    import resource

    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # /proc/meminfo shows the host's memory inside a container
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read().strip())
        with open("/sys/fs/cgroup/memory.stat") as f:  # page cache the kernel reclaims first is not in use
            cache = next((int(line.split()[1]) for line in f if line.startswith("inactive_file ")), 0)
        if limit.isdigit():
            found.append(max(0, int(limit) - (current - cache)))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/status") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            found.append(max(0, soft - used))
        except (OSError, ValueError, IndexError, StopIteration):
            found.append(soft)
    return min(found) if found else None


def _npy_header(f: Any) -> Tuple[Tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    return tuple(shape), np.dtype(dtype)


def check_npz(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Refuse a .npz whose arrays, as declared, would not fit in memory, before decompressing anything;
    the shape each array declares (by key).

    A .npz is a zip: 8 MB of compressed zeros can declare gigabytes. Each member's uncompressed size (zip
    header) is added up against the memory available, and each array's header (shape x dtype) must fit
    in its member: numpy allocates what the header declares before reading."""
    import zipfile

    total = 0
    shapes: Dict[str, Tuple[int, ...]] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as f:
                shape, dtype = _npy_header(f)
            declared = dtype.itemsize
            for d in shape:
                declared *= int(d)
            if declared > info.file_size:
                raise DataError(f"{path}: {info.filename} declares shape {list(shape)} {dtype} "
                                f"({declared} bytes) but holds {info.file_size}; refused")
            total += info.file_size
            shapes[info.filename[:-4] if info.filename.endswith(".npy") else info.filename] = tuple(shape)
    budget = available_memory()
    if budget is not None and total > budget:
        raise DataError(f"{path}: its arrays take {total / 2**30:.1f} GiB uncompressed, more than the "
                        f"{budget / 2**30:.1f} GiB of memory available; split it into smaller files")
    return shapes


def _load_array_file(path: Path, specs: Sequence[InputSpec]) -> Mapping[str, Any]:
    import zipfile

    try:
        if path.suffix.lower() == ".npy":
            return {_single_input(specs, f"{path}: a .npy file").name: np.load(path, mmap_mode="r")}
        shapes = check_npz(path)
        with np.load(path) as npz:
            keys = list(npz.files)
            names = [specs[0].name] if len(specs) == 1 and len(keys) == 1 else keys  # arr_0 for a one-input model
            by_name = {s.name: s for s in specs}
            for name, key in zip(names, keys):  # shapes as declared, before decompressing a wrong one
                if name in by_name and key in shapes:
                    _check_shape(by_name[name], shapes[key], str(path))
            return {name: npz[key] for name, key in zip(names, keys)}
    except PtqError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataError(f"{path}: cannot read array file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in memory; split it into smaller files") from None


def array_files_source(files: Sequence[Path], specs: Sequence[InputSpec], description: str) -> DataSource:
    def feeds():
        for f in files:
            yield _load_array_file(f, specs), str(f)

    return _array_source("arrays", description, feeds, specs)


def arrays_source(arrays: Sequence[Any], specs: Sequence[InputSpec]) -> DataSource:
    spec = _single_input(specs, "a list of arrays")

    def feeds():
        for i, a in enumerate(arrays):
            yield {spec.name: a}, f"array {i}"

    return _array_source("arrays", f"{len(arrays)} arrays", feeds, specs)


def feeds_source(feed_dicts: Iterable[Mapping[str, Any]], specs: Sequence[InputSpec], kind: str = "feeds",
                 description: str = "feed dicts", origin: str = "feed") -> DataSource:
    def feeds():
        for i, f in enumerate(feed_dicts):
            if not isinstance(f, Mapping):
                raise DataError(f"{origin} {i}: expected a dict of input name -> array, got {type(f).__name__}")
            yield f, f"{origin} {i}"

    return _array_source(kind, description, feeds, specs)


def reader_source(reader: Any, specs: Sequence[InputSpec]) -> DataSource:
    """onnxruntime CalibrationDataReader: get_next() until it returns None."""
    def iterate():
        while True:
            feed = reader.get_next()
            if feed is None:
                return
            yield feed

    return feeds_source(iterate(), specs, "reader", f"{type(reader).__name__} (CalibrationDataReader)")


# --- images ------------------------------------------------------------------------------------------
def _decode(path: Path, plans: Sequence[ImagePlan]) -> Tuple[Sample, bool]:
    img = open_image(path, (max(p.width for p in plans), max(p.height for p in plans)))
    gray = is_grayscale(img) and any(p.channels == 3 for p in plans)
    return {p.input_name: preprocess_pil(img, p) for p in plans}, gray


def image_source(directory: Path, files: Sequence[Path], plans: Sequence[ImagePlan], *, strict: bool,
                 workers: int, depth: int) -> DataSource:
    source_log = SourceLog()

    def samples() -> Iterator[KeyedSample]:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptq-decode") as pool:
            pending: deque = deque()
            it = iter(files)
            for f in it:  # keep at most `depth` decodes in flight, consume in file order
                pending.append((image_key(directory, f), f, pool.submit(_decode, f, plans)))
                if len(pending) >= depth:
                    yield from _take(pending.popleft(), source_log, strict)
            while pending:
                yield from _take(pending.popleft(), source_log, strict)

    def manifest() -> str:
        return manifest_sha256(directory, files)

    return DataSource("images", f"{len(files)} images in {directory}", samples, len(files), manifest, source_log)


def image_key(directory: Path, path: Path) -> str:
    """A sample's identity: its path relative to the data directory (posix), or its name."""
    try:
        return path.relative_to(directory).as_posix()
    except ValueError:
        return path.name


def _take(item: Tuple[str, Path, Any], source_log: SourceLog, strict: bool) -> Iterator[KeyedSample]:
    key, path, future = item
    try:
        sample, gray = future.result()
    except DataError as exc:
        if strict:
            raise
        log.info("skipped: %s", exc)  # the run report lists them all; the CLI summarises
        source_log.skipped.append((str(path), str(exc).split(": ", 1)[-1]))
        return
    if gray:
        if not source_log.grayscale:
            log.info("%s: grayscale image converted to 3 channels (later ones are converted too)", path)
        source_log.grayscale.append(str(path))
    yield key, sample


# --- choosing a source ---------------------------------------------------------------------------
def open_source(data: Any, specs: Sequence[InputSpec], plans: Callable[[], Sequence[ImagePlan]], *,
                limit: Optional[int], seed: int, strict: bool, workers: int, depth: int,
                shuffle: bool = False, within: Optional[int] = None) -> DataSource:
    """Pick the source for `data`. plans() is called only for image data (it may raise OptionError).

    shuffle: images (a directory or a list file) are read in a seeded random order (ptqengine.images.shuffled);
    array data keeps its own order, with a note.
    within: `limit` samples taken from among those a run with limit=within reads (a run's --limit, for the
    few samples its data-driven steps look at again)."""
    if isinstance(data, (str, Path)):
        return _path_source(Path(data), specs, plans, limit=limit, seed=seed, strict=strict,
                            workers=workers, depth=depth, shuffle=shuffle, within=within)
    return _in_given_order(_memory_source(data, specs, _prefix(limit, within)), shuffle)


def _prefix(limit: Optional[int], within: Optional[int]) -> Optional[int]:
    """The first `limit` of the first `within` samples (array data is taken from the front)."""
    return within if limit is None else limit if within is None else min(limit, within)


def _memory_source(data: Any, specs: Sequence[InputSpec], limit: Optional[int]) -> DataSource:
    if isinstance(data, LoaderScript):  # re-iterable: each pass calls the script's function again
        return first_samples(feeds_source(data, specs, "script", str(data), origin=f"{data} feed"), limit)
    if hasattr(data, "get_next") and callable(data.get_next):
        return first_samples(reader_source(data, specs), limit)
    if isinstance(data, np.ndarray):
        return first_samples(arrays_source([data], specs), limit)
    if isinstance(data, Mapping):
        return first_samples(feeds_source([data], specs), limit)
    if isinstance(data, (list, tuple)):
        if not data:
            raise DataError("calibration data is an empty list")
        if all(isinstance(d, Mapping) for d in data):
            return first_samples(feeds_source(data, specs, description=f"{len(data)} feed dicts"), limit)
        if all(isinstance(d, np.ndarray) for d in data):
            return first_samples(arrays_source(data, specs), limit)
        raise DataError("a data list must hold only numpy arrays or only feed dicts (input name -> array)")
    if isinstance(data, Iterable):
        return first_samples(_peeked_iterable(iter(data), specs), limit)
    raise DataError(f"unsupported calibration data of type {type(data).__name__}")


def _in_given_order(source: DataSource, shuffle: bool) -> DataSource:
    if shuffle:
        source.log.notes.append(f"{source.description}: array data is read in its own order (only images are "
                                "shuffled); shuffle it if neighbouring samples are alike")
    return source


def _peeked_iterable(it: Iterator[Any], specs: Sequence[InputSpec]) -> DataSource:
    def items():
        for i, item in enumerate(it):
            if isinstance(item, np.ndarray):
                yield {_single_input(specs, "an iterable of arrays").name: item}
            elif isinstance(item, Mapping):
                yield item
            else:
                raise DataError(f"item {i} of the data iterable is a {type(item).__name__}, "
                                "not an array or a feed dict")
    return feeds_source(items(), specs, "feeds", "iterable")


def _path_source(path: Path, specs, plans, *, limit, seed, strict, workers, depth, shuffle, within) -> DataSource:
    if path.is_file() and not is_image_list(path):
        if path.suffix.lower() in ARRAY_SUFFIXES:
            return _in_given_order(first_samples(array_files_source([path], specs, str(path)), _prefix(limit, within)),
                                   shuffle)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return image_source(path.parent, [path], plans(), strict=strict, workers=workers, depth=depth)
        raise DataError(f"{path}: not a data directory, image list (.txt/.lst), image or .npy/.npz file")
    base, images = image_files(path)  # raises DataError for a missing or empty directory, or a bad list
    if images:
        chosen = sample_files(sample_files(images, within, seed), limit, seed)
        return image_source(base, shuffled(chosen, seed) if shuffle else chosen, plans(), strict=strict,
                            workers=workers, depth=depth)
    arrays = find_arrays(path)
    if arrays:
        source = array_files_source(arrays, specs, f"{len(arrays)} array files in {path}")
        return _in_given_order(first_samples(source, _prefix(limit, within)), shuffle)
    raise DataError(f"{path}: no images ({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))}) "
                    "or .npy/.npz files found")


def first_samples(source: DataSource, limit: Optional[int]) -> DataSource:
    """The first `limit` samples of a source (array data: their order is the caller's, so no sampling)."""
    if limit is None:
        return source
    inner = source.samples

    def samples() -> Iterator[KeyedSample]:
        for i, s in enumerate(inner()):
            if i >= limit:
                return
            yield s

    total = min(limit, source.total) if source.total is not None else limit
    return DataSource(source.kind, source.description, samples, total, source.manifest, source.log)
