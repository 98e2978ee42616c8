"""Synthetic inputs for checking quantised models: rendered text pages and text-line crops.

Used by the tests and benchmarks (and handy for users checking an OCR / orientation model): pages of
random words drawn with Pillow's built-in scalable font (`ImageFont.load_default(size=...)`, Pillow >=
10.1), optionally rotated by 0/90/180/270 degrees. Deterministic for a given seed.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import List, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont

WORDS = ("the quick brown fox jumps over lazy dog calibration model tensor scale range int8 engine "
         "layer weight channel output input value page text orientation detect recognise sample "
         "12 345 6789 2026 ONNX TensorRT Q/DQ data image pixel histogram entropy").split()
ROTATIONS = (0, 90, 180, 270)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_page(seed: int, size: Tuple[int, int] = (320, 320), rotation: int = 0) -> Image.Image:
    """A white page (W, H) of black text lines, rotated counter-clockwise by `rotation` degrees."""
    rng = random.Random(seed)
    width, height = size
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    font_size = rng.randint(14, 22)
    font = _font(font_size)
    y = rng.randint(4, 16)
    while y < height - font_size:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        draw.text((rng.randint(4, 20), y), words, fill=(0, 0, 0), font=font)
        y += int(font_size * rng.uniform(1.3, 1.8))
    return page.rotate(rotation, expand=True) if rotation else page


def render_line(seed: int, height: int = 48) -> Tuple[Image.Image, str]:
    """One text line (the kind a text recogniser reads) and its text."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
    font = _font(int(height * 0.6))
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right + 16, height), (255, 255, 255))
    ImageDraw.Draw(image).text((8, (height - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return image, text


def write_pages(out_dir: Union[str, Path], count: int, seed: int = 0,
                rotations: Sequence[int] = ROTATIONS) -> List[Tuple[Path, int]]:
    """count JPEG pages in out_dir, cycling through rotations; returns (path, rotation) pairs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        rotation = rotations[i % len(rotations)]
        path = out / f"page_{i:04d}_rot{rotation}.jpg"
        render_page(seed * 100003 + i, rotation=rotation).save(path, quality=92)
        written.append((path, rotation))
    return written


def write_lines(out_dir: Union[str, Path], count: int, seed: int = 0) -> List[Tuple[Path, str]]:
    """count JPEG text lines in out_dir; returns (path, text) pairs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        image, text = render_line(seed * 100003 + i)
        path = out / f"line_{i:04d}.jpg"
        image.save(path, quality=92)
        written.append((path, text))
    return written
