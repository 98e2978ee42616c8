// CUDA path of TensorStats::update for data already on the GPU (no copy to the host).
// Same grid, same per-element functions (binning.h) as the CPU: the counts are identical.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "tensor_stats.h"

namespace ptq {
namespace cuda {

inline std::string hex_address(std::uintptr_t at) {
  char text[24];
  std::snprintf(text, sizeof text, "%#llx", static_cast<unsigned long long>(at));
  return text;
}

// Bytes of n float32 values (float16 bits when is_half) from address `at`: StatsError unless n > 0,
// the address is aligned to the element and the range fits the address space. Host arithmetic
// only, checked before any CUDA call; whether the bytes are this device's memory is asked of CUDA.
inline std::size_t device_input_bytes(std::uintptr_t at, std::int64_t n, bool is_half) {
  const std::uintptr_t item = is_half ? 2 : 4;
  if (n <= 0)
    throw StatsError("cannot update statistics with an empty array, got size " + std::to_string(n));
  if (at == 0) throw StatsError("device address is null");
  if (at % item != 0)
    throw StatsError("device address " + hex_address(at) + " is not aligned to its " +
                     std::to_string(item) + "-byte values");
  if (static_cast<std::uint64_t>(n) > (UINTPTR_MAX - at) / item)
    throw StatsError(std::to_string(n) + " values from device address " + hex_address(at) +
                     " run past the address space");
  return static_cast<std::size_t>(n) * item;
}

// True when the CUDA runtime finds at least one usable device.
bool device_available();

// data: device pointer to n contiguous float32 values, or float16 bits when is_half, all of them in
// memory of the current device (checked: StatsError otherwise, before any kernel runs).
// Throws StatsError (with CUDA's message) on any CUDA failure.
void update_from_device(TensorStats& stats, const void* data, std::int64_t n, bool is_half);

}  // namespace cuda
}  // namespace ptq
