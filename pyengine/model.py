"""ONNX model loading and inspection: inputs, and every float activation worth calibrating.

An activation is a graph input or a node output whose element type is float32 or float16 and whose value
depends on the graph inputs; initializers, tensors computed from constants alone (Constant nodes,
Identity of a weight: TensorRT folds them into weights) and integer / bool tensors (shapes, indices) are
not. Shape inference supplies the types; a node output it leaves untyped is asked of onnxruntime, which
types every tensor when it builds a session.

Model files are untrusted input: external-data locations are checked (inside the model's folder, regular
files) before anything reads them.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Dim = Union[int, str, None]

FLOAT_TYPES = {TensorProto.FLOAT: np.dtype(np.float32), TensorProto.FLOAT16: np.dtype(np.float16)}
_ORT_FLOAT_TYPES = {"tensor(float)", "tensor(float16)"}
# Names onnxruntime reports for input types we can feed from numpy.
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int16)": np.int16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


@dataclass
class InputSpec:
    """One graph input: shape as declared (int, symbolic name or None), numpy dtype, layout guess."""

    name: str
    shape: List[Dim]
    dtype: np.dtype
    layout_guess: Optional[str] = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def fixed_batch(self) -> Optional[int]:
        """The batch dimension when it is a fixed positive int, else None (dynamic)."""
        if self.shape and isinstance(self.shape[0], int) and self.shape[0] > 0:
            return self.shape[0]
        return None

    def shape_text(self) -> str:
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass
class ModelInfo:
    path: Path
    sha256: str
    inputs: List[InputSpec]
    activations: List[str]  # graph order: graph inputs first, then node outputs
    activation_dtypes: Dict[str, np.dtype] = field(default_factory=dict, repr=False)
    # shapes as shape inference gives them (int, symbolic name or None per dim); absent when unknown
    activation_shapes: Dict[str, List[Dim]] = field(default_factory=dict, repr=False)


def load_model(path: PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Parse an ONNX file (external data read from beside it unless load_external_data=False).

    External-data locations are checked first (external_data_files): a model cannot make us read a
    file outside its folder or a device such as /dev/zero.
    """
    p = Path(path)
    if p.is_dir():
        raise ModelError(f"{p}: is a directory, expected an ONNX model file")
    if not p.is_file():
        raise ModelError(f"{p}: model file not found")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: not an ONNX file
        raise ModelError(f"{p}: not a valid ONNX model ({type(exc).__name__})") from None
    external_data_files(model, p)
    if load_external_data and external_data_locations(model):
        from onnx.external_data_helper import load_external_data_for_tensor

        folder = str(p.resolve().parent)  # the folder the check used
        try:
            # every tensor the check covered: onnx's load_external_data_for_model leaves sparse ones
            # external, and a session built from the loaded model has no folder to find them in
            for tensor in model_tensors(model):
                if tensor.data_location == TensorProto.EXTERNAL:
                    load_external_data_for_tensor(tensor, folder)
                    tensor.data_location = TensorProto.DEFAULT
                    del tensor.external_data[:]
        except Exception as exc:
            raise ModelError(f"{p}: cannot read its external data ({str(exc).splitlines()[0]})") from None
    return model


def external_data_files(model: Optional[onnx.ModelProto], path: PathLike) -> List[Path]:
    """The model's external-data files (sorted), each checked to be a regular file inside its folder."""
    p = Path(path)
    folder = p.resolve().parent
    files = []
    for location in sorted(external_data_locations(model)):
        try:
            target = (folder / location).resolve()
            named = Path(os.path.normpath(folder / location))  # the same path without following links
            inside = not Path(location).is_absolute() and (target == folder or folder in target.parents)
            exists, regular = (target.exists(), target.is_file()) if inside else (False, False)
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, a symlink loop
            raise ModelError(f"{p}: external data location {location[:80]!r} cannot be a file name; refused") from None
        if not inside:
            raise ModelError(f"{p}: external data location {location!r} leaves the model's folder; refused")
        if target != named:  # onnx 1.23 refuses to read these; refused up front, whatever the version
            raise ModelError(f"{p}: external data location {location!r} is or passes through a symbolic link; refused")
        if not exists:
            raise ModelError(f"{p}: external data file missing ({location})")
        if not regular:
            raise ModelError(f"{p}: external data location {location!r} is not a regular file; refused")
        files.append(target)
    return files


def file_sha256(path: PathLike, model: Optional[onnx.ModelProto] = None) -> str:
    """sha256 of the model file, followed by its external data files (sorted) when it has any."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] + external_data_files(model, p)
    for f in files:
        try:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:
            raise ModelError(f"{f}: cannot read ({exc.strerror})") from None
    return h.hexdigest()


def model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a model carries: initializers, sparse initializers, Constant / node attribute tensors
    (dense and sparse), in the main graph, its model-local functions and every subgraph (If / Loop / Scan
    bodies) at any depth.
    Each of them can name external data; checking only the top-level initializers let the others be read
    from wherever onnxruntime resolves them (the current directory, for a session built from bytes)."""
    graphs: list = [model.graph, *model.functions]  # a model-local function holds nodes only
    while graphs:  # a work list, not recursion: a hostile model may nest subgraphs thousands deep
        g = graphs.pop()
        if isinstance(g, onnx.GraphProto):
            yield from g.initializer
            for sparse in g.sparse_initializer:
                yield sparse.values
                yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + \
                        list(attr.sparse_tensors):
                    yield sparse.values
                    yield sparse.indices
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def external_data_locations(model: Optional[onnx.ModelProto]) -> set:
    """The external-data location of every tensor in the model (see model_tensors)."""
    locations = set()
    if model is None:
        return locations
    for tensor in model_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            # a tensor marked external with no location would be resolved by whoever reads it
            locations.add(entries.get("location", ""))
    return locations


_EMPTY_FOLDER: List[str] = []


def empty_folder() -> Path:
    """A private empty folder, made once per process: the external-data folder of a session built from
    bytes that come with no model folder, so that any external reference fails instead of being read
    from the current directory."""
    if not _EMPTY_FOLDER:
        import atexit
        import shutil
        import tempfile

        _EMPTY_FOLDER.append(tempfile.mkdtemp(prefix="ptqengine-no-external-data-"))
        atexit.register(shutil.rmtree, _EMPTY_FOLDER[0], True)
    return Path(_EMPTY_FOLDER[0])


def _dims(value_info: onnx.ValueInfoProto) -> List[Dim]:
    dims: List[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def guess_layout(shape: Sequence[Dim]) -> Optional[str]:
    """NCHW when dim 1 looks like channels (1, 3 or 4), NHWC when the last dim does; 4-D only."""
    if len(shape) != 4:
        return None
    chan = (1, 3, 4)
    if shape[1] in chan and shape[3] not in chan:
        return "NCHW"
    if shape[3] in chan and shape[1] not in chan:
        return "NHWC"
    if shape[1] in chan and shape[3] in chan:  # e.g. 1x3x3x3: ONNX convention wins
        return "NCHW"
    return None


def _infer(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # a model onnx cannot type may still run in onnxruntime
        log.warning("%s: shape inference failed (%s); asking onnxruntime for tensor types", path.name, exc)
        return model


def _elem_types(model: onnx.ModelProto) -> Dict[str, int]:
    types: Dict[str, int] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def graph_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (older exporters also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def node_outputs(model: onnx.ModelProto) -> List[str]:
    """Node outputs in graph (topological) order, each once, empty optional outputs left out."""
    seen, names = set(), []
    for node in model.graph.node:
        for out in node.output:
            if out and out not in seen:
                seen.add(out)
                names.append(out)
    return names


# Ops that give new values on every run although they read no graph input.
_NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                   "Multinomial", "Bernoulli"})


def constant_tensors(model: onnx.ModelProto) -> set:
    """Node outputs whose value depends on no graph input: Constant nodes and whatever is computed from
    constants and initializers alone. They are weights in disguise (TensorRT folds them), not activations.
    Nodes with subgraphs are taken as input-dependent (their bodies may read outer-scope activations)."""
    known = {i.name for i in model.graph.initializer}
    found: set = set()
    for node in model.graph.node:
        if node.op_type in _NONDETERMINISTIC_OPS or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                        for a in node.attribute):
            continue
        inputs = [i for i in node.input if i]
        if (inputs or node.op_type == "Constant") and all(i in known for i in inputs):
            outputs = [o for o in node.output if o]
            known.update(outputs)
            found.update(outputs)
    return found


def ort_output_types(model: onnx.ModelProto, names: Sequence[str], folder: Optional[Path] = None) -> Dict[str, str]:
    """onnxruntime's type string for each name, exposing them as untyped graph outputs. folder: where the
    model's external data lives (None: the model has none it may read)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for n in names:
        if n not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4  # its errors come back as our one line, not as its own log line first
    # built from bytes: without a folder onnxruntime would resolve external data in the current directory
    so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                str(folder if folder is not None else empty_folder()))
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    return {o.name: o.type for o in sess.get_outputs()}


def _shapes(inferred: onnx.ModelProto) -> Dict[str, List[Dim]]:
    g = inferred.graph
    return {vi.name: _dims(vi) for vi in list(g.input) + list(g.value_info) + list(g.output)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}


def find_activations(model: onnx.ModelProto, path: PathLike = "<model>",
                     inferred: Optional[onnx.ModelProto] = None) -> Dict[str, np.dtype]:
    """Every float activation (name -> dtype) in graph order: graph inputs, then node outputs."""
    if inferred is None:
        inferred = _infer(model, Path(path))
    types = _elem_types(inferred)
    inits = {i.name for i in model.graph.initializer} | constant_tensors(model)
    found: Dict[str, Optional[np.dtype]] = {}
    for vi in graph_inputs(model):
        if types.get(vi.name) in FLOAT_TYPES:
            found[vi.name] = FLOAT_TYPES[types[vi.name]]
    untyped = []
    for name in node_outputs(model):
        if name in inits or name in found:
            continue
        if name not in types:
            untyped.append(name)
            found[name] = None  # placeholder keeps graph order
        elif types[name] in FLOAT_TYPES:
            found[name] = FLOAT_TYPES[types[name]]
    if untyped:
        folder = Path(path).resolve().parent if Path(path).is_file() else None
        ort_types = ort_output_types(model, untyped, folder)
        for name in untyped:
            t = ort_types.get(name)
            found[name] = np.dtype(np.float32 if t == "tensor(float)" else np.float16) \
                if t in _ORT_FLOAT_TYPES else None
    return {n: d for n, d in found.items() if d is not None}


def input_specs(model: onnx.ModelProto) -> List[InputSpec]:
    specs = []
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        if tt.elem_type in FLOAT_TYPES:
            dtype = FLOAT_TYPES[tt.elem_type]
        else:
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
            except Exception:
                raise ModelError(f"input {vi.name!r}: unsupported element type {tt.elem_type}") from None
        shape = _dims(vi)
        specs.append(InputSpec(vi.name, shape, dtype, guess_layout(shape)))
    return specs


def inspect_model(path: PathLike) -> ModelInfo:
    """Inputs and float activations of the model at path (weights are not loaded)."""
    p = Path(path)
    model = load_model(p, load_external_data=False)
    return info_from_model(model, p)


def info_from_model(model: onnx.ModelProto, path: Path) -> ModelInfo:
    if not model.graph.node:
        # protobuf parses many non-ONNX files (an empty one, say) into an empty model
        raise ModelError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    inferred = _infer(model, path)
    acts = find_activations(model, path, inferred)
    shapes = _shapes(inferred)
    return ModelInfo(path=path, sha256=file_sha256(path, model), inputs=input_specs(model),
                     activations=list(acts), activation_dtypes=acts,
                     activation_shapes={n: shapes[n] for n in acts if n in shapes})


# Ops that read a constant operand as data TensorRT may quantise (slots; None = every input).
_CONSTANT_READERS: Dict[str, Optional[Tuple[int, ...]]] = {
    "Add": None, "Sub": None, "Mul": None, "Div": None, "Max": None, "Min": None, "Sum": None, "Mean": None,
    "Concat": None, "MatMul": None, "Where": (1, 2), "Pad": (2,)}
_CONSTANT_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def constant_ranges(model: onnx.ModelProto, folder: PathLike = "") -> Dict[str, float]:
    """name -> max|value| for float constants (Constant node outputs, initializers) read as data by an op
    TensorRT may run in int8 (_CONSTANT_READERS), in graph order: a TensorRT cache lists them too (TensorRT's
    own caches carry `(Unnamed Layer* N) [Constant]_output` entries), and an exact range needs no data.
    Weights of Conv / Gemm / ConvTranspose and BatchNormalization parameters are not read that way; all-zero
    or non-finite constants are left out (no scale represents them better than TensorRT's fallback).
    folder: where external data lives (locations already checked by load_model)."""
    graph = model.graph
    values = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    values[node.output[0]] = attr.t
    out: Dict[str, float] = {}
    for node in graph.node:
        if node.op_type not in _CONSTANT_READERS or node.domain not in ("", "ai.onnx"):
            continue
        slots = _CONSTANT_READERS[node.op_type]
        for slot, name in enumerate(node.input):
            tensor = values.get(name)
            if tensor is None or name in out or (slots is not None and slot not in slots) \
                    or tensor.data_type not in _CONSTANT_FLOAT_TYPES:
                continue
            try:
                array = numpy_helper.to_array(tensor, base_dir=str(folder)).astype(np.float64)
            except Exception as exc:  # external data shorter than the tensor, or refused by onnx
                raise ModelError(f"constant {name!r}: cannot read its data ({str(exc).splitlines()[0]})") from None
            finite = array[np.isfinite(array)]
            if finite.size == array.size and finite.size and np.abs(finite).max() > 0:
                out[name] = float(np.abs(finite).max())
    return out
