"""ptqengine: post-training-quantization calibration for ONNX models."""
from ._version import __version__
from .algorithms import ALGORITHMS, AsymmetricRange, compute_amax_many, symmetric_scale
from .errors import PtqError
from .stats import TensorStats, merge_all, update_many
from .statsfile import StatsBundle, load_stats, save_stats

__all__ = [
    "__version__",
    "ALGORITHMS",
    "AsymmetricRange",
    "PtqError",
    "StatsBundle",
    "TensorStats",
    "compute_amax_many",
    "load_stats",
    "merge_all",
    "save_stats",
    "symmetric_scale",
    "update_many",
]
