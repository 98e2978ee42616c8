"""ptqengine: post-training-quantization calibration for ONNX models."""
from ._version import __version__
from .algorithms import ALGORITHMS, AsymmetricRange, compute_amax, compute_amax_many, symmetric_scale
from .errors import PtqError
from .stats import TensorStats, merge_all, update_many
from . import gpu  # noqa: E402,F401  (registers the GPU path of TensorStats.update; CuPy loads on first use)
from .statsfile import StatsBundle, load_stats, save_stats

# Calibration pulls in onnx and onnxruntime (~0.5 s): loaded on first use, so that the statistics
# core stays a light import.
_LAZY = {"calibrate": "api", "CalibrationResult": "result", "RunReport": "result", "result_from_stats": "result",
         "RunOptions": "collect", "LoaderScript": "loader_script"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ptqengine' has no attribute {name!r}")


__all__ = [
    "__version__",
    "ALGORITHMS",
    "AsymmetricRange",
    "CalibrationResult",
    "LoaderScript",
    "RunOptions",
    "RunReport",
    "calibrate",
    "result_from_stats",
    "PtqError",
    "StatsBundle",
    "TensorStats",
    "compute_amax",
    "compute_amax_many",
    "load_stats",
    "merge_all",
    "save_stats",
    "symmetric_scale",
    "update_many",
]
