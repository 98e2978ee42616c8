// CUDA path of TensorStats::update for data already on the GPU (no copy to the host).
// Same grid, same per-element functions (binning.h) as the CPU: the counts are identical.
#pragma once
#include <cstdint>

#include "tensor_stats.h"

namespace ptq {
namespace cuda {

// True when the CUDA runtime finds at least one usable device.
bool device_available();

// data: device pointer to n contiguous float32 values, or float16 bits when is_half.
// Throws StatsError (with CUDA's message) on any CUDA failure.
void update_from_device(TensorStats& stats, const void* data, std::int64_t n, bool is_half);

}  // namespace cuda
}  // namespace ptq
