"""The one place onnxruntime sessions are built: for a device and a purpose.

Purposes, and why each has its own settings:
- OBSERVE: every activation keeps its name (graph optimisations off: fusing Conv+BN or Conv+Relu would
  rename or drop tensors the statistics must see).
- REFERENCE: an FP32 model as the yardstick of an INT8 one.
- SIMULATE: a Q/DQ model as TensorRT runs it: the int8 values of each Q/DQ pair, computed in float
  (`session.disable_quant_qdq`). onnxruntime would otherwise fuse DQ -> op -> Q into its own int8 CPU
  kernels, whose results depend on the CPU (x86 without VNNI sums pairs of u8*s8 products in 16 bits and
  saturates), so they would measure the CPU, not the calibration. REFERENCE and SIMULATE share every
  other setting, so their difference is the quantisation error alone.
- DEPLOY: full optimisations, fused int8 kernels: how onnxruntime itself would run the model (latency,
  and the CPU-kernel figure when a user asks for it).
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ModelError, OptionError
from ..model import empty_folder
from .device import CPU, Device, ort_providers


class Purpose(str, Enum):
    OBSERVE = "observe"
    REFERENCE = "reference"
    SIMULATE = "simulate"
    DEPLOY = "deploy"


def session_options(purpose: Purpose, threads: Optional[int] = None, external_data_dir: Optional[Path] = None):
    """external_data_dir: where a model given as bytes finds its external data. Always set for bytes (an
    empty folder when the caller names none): onnxruntime would otherwise resolve external-data locations,
    in Constant attributes and subgraphs too, against the current directory."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if purpose is Purpose.OBSERVE
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads or 0)
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # fatal only: its errors reach the user as our one line, not as its log line first
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if purpose in (Purpose.REFERENCE, Purpose.SIMULATE):
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if external_data_dir is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_data_dir))
    return so


def create_session(model: Union[bytes, str, Path], origin: str, *, purpose: Purpose, device: Device = CPU,
                   threads: Optional[int] = None, external_data_dir: Optional[Path] = None) -> Any:
    """An InferenceSession for `model` (serialised bytes or a path); ModelError naming `origin` if it fails."""
    import onnxruntime as ort

    if isinstance(model, bytes):
        source: Union[bytes, str] = model
        folder: Optional[Path] = external_data_dir if external_data_dir is not None else empty_folder()
    else:  # onnxruntime resolves external data beside the file itself
        source, folder = str(model), None
    try:
        session = ort.InferenceSession(source, session_options(purpose, threads, folder),
                                       providers=ort_providers(device))
    except Exception as exc:
        raise ModelError(f"{origin}: onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    if device.is_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        # onnxruntime falls back to the CPU silently when the CUDA provider fails to start
        raise OptionError(f"--device {device}: onnxruntime could not start its CUDA provider on this device "
                          "(see its log with --verbose)")
    return session


def model_sessions(device: Device = CPU, threads: Optional[int] = None):
    """A ptqengine.qdq Sessions callable: (model, origin, unfused_qdq) -> a ModelRunner on `device` (FP32
    models as REFERENCE, Q/DQ models as SIMULATE), for the Q/DQ export's data-driven steps. The models are
    built in memory with their weights inside: they get no external-data folder (an empty one)."""
    from .runner import ModelRunner

    def make(model: Any, origin: str, unfused_qdq: bool) -> Any:
        session = create_session(model.SerializeToString(), origin, device=device, threads=threads,
                                 purpose=Purpose.SIMULATE if unfused_qdq else Purpose.REFERENCE)
        return ModelRunner(session, origin, device)

    return make
