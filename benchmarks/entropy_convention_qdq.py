"""Does the entropy zero-mask convention matter for the quantised model? (issue 10, oracles)

Our search keeps Q empty where P is (after the outliers are folded in: MXNet, onnxruntime); ModelOpt keeps
it empty where bins[:i] is (see README "Oracles we did not write"). Here both run on the same statistics
(ours natively; ModelOpt's convention through tests/reference.py on our search histogram), each set of
ranges goes through quantize_model, and each INT8 model runs in onnxruntime with Q/DQ NOT fused
(session.disable_quant_qdq: onnxruntime's fused int8 kernels are not a quantisation oracle on x86 without
VNNI) against FP32 on separate evaluation samples. Models and data as bench_qdq.py.

    python benchmarks/entropy_convention_qdq.py --calib 32 --eval 64
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np
import onnxruntime as ort

from ptqengine import calibrate
from ptqengine.qdq import quantize_model

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import reference  # noqa: E402
from bench_qdq import MODELS, arrays_for, compare  # noqa: E402


def run_unfused(path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def unfolded_amax(stats) -> float:
    bins, width = stats.search_histogram()
    if width == 0.0:
        return 0.0
    bins = bins.copy()
    bins[0] = bins[1]  # zero_bin="neighbour", the default of both
    return reference.entropy_amax_of_histogram(bins, width, "unfolded")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=64)
    args = ap.parse_args()
    for label, spec in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            work = pathlib.Path(tmp)
            spec["writer"](work / "calib", args.calib, seed=1)
            eval_files = [p for p, _ in spec["writer"](work / "eval", args.eval, seed=2)]
            x_eval = arrays_for(eval_files, spec["path"], spec["preprocess"])
            ref = run_unfused(spec["path"], x_eval)
            result = calibrate(spec["path"], work / "calib", preprocess=spec["preprocess"], algo="entropy")
            ranges = {"folded (ours)": dict(result.amax),
                      "unfolded (ModelOpt)": {n: unfolded_amax(s) for n, s in result.stats.tensors.items()}}
            changed = sum(abs(ranges["folded (ours)"][n] - a) > 1e-6 * a for n, a in ranges["unfolded (ModelOpt)"].items())
            print(f"{label}: {len(result.amax)} tensors, {changed} with a different amax")
            for name, amax in ranges.items():
                out = work / f"{label}.{name.split()[0]}.onnx"
                quantize_model(spec["path"], out, calibration=amax)
                agreement, cosine = compare(ref, run_unfused(out, x_eval), spec["kind"])
                print(f"  {name:20s} agreement with FP32 {agreement:.1%}  cosine {cosine:.5f}")


if __name__ == "__main__":
    main()
