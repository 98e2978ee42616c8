"""Where a model runs: `cpu` or `cuda[:N]`, parsed once, and what onnxruntime needs for it.

A CUDA device needs onnxruntime-gpu (its CUDA execution provider) for inference and CuPy for the
statistics kernels (ptqengine.gpu); both are checked before any work, with one line that says what to
install. onnxruntime and onnxruntime-gpu install the same `onnxruntime` module, so a CPU-only build left
in the environment hides the GPU one: the message says how to replace it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Union

from ..errors import OptionError

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")
CUDA_PROVIDER = "CUDAExecutionProvider"
# as the README's GPU section says it, in the ptqengine checkout
INSTALL_GPU = ('pip install ".[gpu]" && pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps '
               '"onnxruntime-gpu>=1.31"')


@dataclass(frozen=True)
class Device:
    kind: str = "cpu"  # "cpu" or "cuda"
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


CPU = Device()


def parse_device(value: Union[str, Device, None]) -> Device:
    """'cpu', 'cuda' (= cuda:0) or 'cuda:N'."""
    if value is None:
        return CPU
    if isinstance(value, Device):
        return value
    match = _DEVICE.match(str(value).strip().lower())
    if match is None:
        raise OptionError(f"--device: expected cpu, cuda or cuda:N, got {value!r}")
    if match.group(1) == "cpu":
        if match.group(2) is not None:
            raise OptionError(f"--device: cpu takes no index, got {value!r}")
        return CPU
    return Device("cuda", int(match.group(2) or 0))


def ort_providers(device: Device) -> List[Any]:
    if not device.is_cuda:
        return ["CPUExecutionProvider"]
    return [(CUDA_PROVIDER, {"device_id": device.index}), "CPUExecutionProvider"]


def check_device(device: Device, statistics: bool = True) -> None:
    """Refuse a CUDA device that cannot work here, in one line, before any work (statistics: the GPU
    statistics kernels are needed too, not only onnxruntime's CUDA provider)."""
    if not device.is_cuda:
        return
    import onnxruntime as ort

    if CUDA_PROVIDER not in ort.get_available_providers():
        raise OptionError(f"--device {device}: onnxruntime {ort.__version__} here has no CUDA provider (a CPU-only "
                          f"build); install onnxruntime-gpu in its place: {INSTALL_GPU}")
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:  # CUDA and cuDNN from the NVIDIA pip wheels, when no toolkit is installed
        preload()
    if statistics:
        from ..gpu import gpu_status

        gpu_status(str(device))
