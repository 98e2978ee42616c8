"""Finding, sampling and generating calibration images."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from ptqengine.errors import DataError
from ptqengine.images import find_images, generate_calibration_images, sample_files


def test_find_images_recursive_sorted_case_insensitive(tmp_path):
    names = ["b.jpg", "a.PNG", "sub/c.jpeg", "sub/deeper/d.bmp", "e.webp", "notes.txt", "f.npy", "a0.JPG"]
    for n in reversed(names):
        p = tmp_path / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.PNG", "a0.JPG", "b.jpg", "e.webp", "sub/c.jpeg", "sub/deeper/d.bmp"]


def test_find_images_errors(tmp_path):
    with pytest.raises(DataError, match="missing: data directory not found"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: data directory is empty"):
        find_images(tmp_path / "empty")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not a directory"):
        find_images(tmp_path / "file.jpg")


def test_sample_files_seeded_and_order_independent():
    files = [Path(f"img_{i:03d}.jpg") for i in range(50)]
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    a = sample_files(files, 10, seed=1)
    assert a == sample_files(shuffled, 10, seed=1)  # input order does not matter
    assert a == sorted(a) and len(set(a)) == 10 and set(a) <= set(files)
    assert a != sample_files(files, 10, seed=2)
    assert sample_files(shuffled, None) == files
    assert sample_files(shuffled, 100) == files


def test_generated_images_are_deterministic(tmp_path):
    a = generate_calibration_images(tmp_path / "a", 6, size=(40, 48), seed=5)
    b = generate_calibration_images(tmp_path / "b", 6, size=(40, 48), seed=5)
    c = generate_calibration_images(tmp_path / "c", 6, size=(40, 48), seed=6)
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]
    with Image.open(a[0]) as img:
        assert img.size == (48, 40) and img.mode == "RGB" and img.format == "JPEG"
    assert len({p.read_bytes() for p in a}) == 6  # all different crops
