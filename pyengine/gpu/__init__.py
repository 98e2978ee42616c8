"""Statistics that live on the GPU: the device side of the statistics layer.

    from ptqengine.gpu import DeviceStatsSet, gpu_status
    gpu_status("cuda:0")                          # OptionError (one line) when unusable
    stats = DeviceStatsSet(specs, device_id=0)    # specs: (num_bins, grid_bins, axis) per tensor
    stats.update(arrays)                          # per batch: queues the kernels, returns at once
    stats.synchronize()                           # before the batch's buffers are overwritten
    stats.to_host()                               # List[TensorStats], bit-identical to the CPU's

Kernels: csrc/cuda/stats_kernels.cu, compiled at run time by NVRTC through CuPy (no CUDA
toolkit needed, only the driver and the pip wheels). Importing this package needs no GPU.
"""
from ..stats import register_device_updates
from .device_set import DeviceStatsSet, update_tensor_stats, update_tensor_stats_legacy
from .status import device_count, device_index, gpu_status
from .tensors import DeviceTensor

register_device_updates(update_tensor_stats, update_tensor_stats_legacy)  # TensorStats.update(gpu array)

__all__ = ["DeviceStatsSet", "DeviceTensor", "device_count", "device_index", "gpu_status"]
