"""Finding, listing, sampling and generating calibration images, deterministically.

Order never depends on how the file system lists a directory: files are sorted by their path relative
to the data directory, and a seeded sample is drawn from that sorted list and returned sorted. A list
file (.txt / .lst: one image path per line, relative to the list file's folder, `#` comments) names
images explicitly, e.g. the subset `ptqengine select` chose; its images count as under their common folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError, OptionError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
ARRAY_SUFFIXES = frozenset({".npy", ".npz"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})

# Colour photos shipped inside scikit-image (no download needed).
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def _files_with(directory: Path, suffixes: frozenset) -> List[Path]:
    found = [p for p in directory.rglob("*") if p.suffix.lower() in suffixes and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def check_data_dir(directory: Union[str, Path]) -> Path:
    d = Path(directory)
    if not d.exists():
        raise DataError(f"{d}: data directory not found")
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    if not any(d.iterdir()):
        raise DataError(f"{d}: data directory is empty")
    return d


def find_images(directory: Union[str, Path]) -> List[Path]:
    """Images (jpg, jpeg, png, bmp, webp; any case) under directory, recursively, sorted by relative path."""
    d = check_data_dir(directory)
    return _files_with(d, IMAGE_SUFFIXES)


def find_arrays(directory: Union[str, Path]) -> List[Path]:
    """.npy / .npz files under directory, recursively, sorted by relative path."""
    return _files_with(check_data_dir(directory), ARRAY_SUFFIXES)


def sample_files(files: Sequence[Path], limit: Optional[int], seed: int = 0) -> List[Path]:
    """A seeded sample of `limit` files (all when limit is None or >= len), returned sorted.

    The input is sorted first, so the sample depends on the set of paths, not on their order.
    """
    ordered = sorted(files, key=lambda p: Path(p).as_posix())
    if limit is None or limit >= len(ordered):
        return ordered
    if limit < 1:
        raise OptionError(f"limit must be >= 1, got {limit}")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(ordered), size=int(limit), replace=False))
    return [ordered[i] for i in picked]


def is_image_list(path: Union[str, Path]) -> bool:
    return Path(path).suffix.lower() in LIST_SUFFIXES and Path(path).is_file()


def read_image_list(path: Union[str, Path]) -> List[Path]:
    """The images a list file names, in its order; DataError naming the line for a missing, non-image or
    repeated entry (a repeat would count that image twice)."""
    p = Path(path)
    try:
        # surrogateescape: names that are not UTF-8 come back as the bytes `select` wrote for them
        lines = p.read_bytes().decode("utf-8", "surrogateescape").splitlines()
    except OSError as exc:
        raise DataError(f"{p}: cannot read the image list ({getattr(exc, 'strerror', None) or exc})") from None
    files: List[Path] = []
    seen = {}
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        f = Path(os.path.normpath(os.path.join(os.path.abspath(p.parent), entry)))
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{p}:{number}: {entry} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if not f.is_file():
            raise DataError(f"{p}:{number}: {entry} not found")
        if f in seen:
            raise DataError(f"{p}:{number}: {entry} is listed twice (also on line {seen[f]})")
        seen[f] = number
        files.append(f)
    if not files:
        raise DataError(f"{p}: the image list names no images")
    return files


def image_files(data: Union[str, Path]) -> Tuple[Path, List[Path]]:
    """(base folder, images) of a data directory (sorted) or a list file (its images' common folder)."""
    d = Path(data)
    if is_image_list(d):
        files = read_image_list(d)
        return Path(os.path.commonpath([str(f.parent) for f in files])), files
    return d, find_images(d)


def shuffled(files: Sequence[Path], seed: int) -> List[Path]:
    """The files in a seeded random order, the same whatever order they came in (every prefix is then a
    random sample: sorted names often group alike images, frames of one video or one camera)."""
    ordered = sorted(files, key=lambda p: Path(p).as_posix())
    order = np.random.default_rng([int(seed), 1]).permutation(len(ordered))
    return [ordered[i] for i in order]


def manifest_sha256(directory: Path, files: Sequence[Path]) -> str:
    """Hash of the sorted relative file names and sizes: what data was used, without reading it."""
    h = hashlib.sha256()
    for rel, size in sorted((Path(f).relative_to(directory).as_posix(), Path(f).stat().st_size) for f in files):
        # os.fsencode: a name that is not UTF-8 hashes as its bytes (str.encode would raise on it)
        h.update(os.fsencode(rel) + f"\t{size}\n".encode())
    return h.hexdigest()


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return img[..., :3] if img.ndim == 3 else np.stack([img] * 3, axis=-1)


def generate_calibration_images(out_dir: Union[str, Path], count: int, size: Tuple[int, int] = (256, 256),
                                seed: int = 0) -> List[Path]:
    """Write `count` JPEGs (H, W = size) cut from scikit-image's photos: random crops, flips, rotations.

    Same arguments -> same files, byte for byte.
    """
    from PIL import Image

    if count < 1:
        raise OptionError(f"count must be >= 1, got {count}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [_photo(n) for n in _PHOTOS]
    height, width = size
    paths = []
    for i in range(count):
        src = photos[int(rng.integers(len(photos)))]
        h, w = src.shape[:2]
        frac = rng.uniform(0.35, 1.0)
        ch, cw = max(8, int(h * frac)), max(8, int(w * frac))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = src[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.rot90(crop, k=int(rng.integers(4)))
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.BILINEAR)
        path = out / f"calib_{i:05d}.jpg"
        img.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths
