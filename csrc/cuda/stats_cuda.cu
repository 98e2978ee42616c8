// Statistics of device-resident data in two kernels, mirroring the CPU's two loops:
// 1. summary: finite |x| maximum, min/max as order-preserving int keys, NaN/non-finite counts,
//    reduced per warp and combined with integer atomics (exact, order-independent);
// 2. histogram: each finite value's signed bin from binning.h, counted with 64-bit atomics.
//    Lanes of a warp that hit the same bin (the zero bin of a ReLU output) are aggregated with
//    __match_any_sync first, so one atomic per distinct bin per warp.
// The host grows the grid between the two, then folds the device counts in with absorb_counts.
#include "cuda/stats_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "binning.h"

namespace ptq {
namespace cuda {
namespace {

struct Summary {
  unsigned int amax_bits;
  int min_key;
  int max_key;
  unsigned long long nan;
  unsigned long long nonfinite;
};

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw StatsError(std::string("CUDA ") + what + ": " + cudaGetErrorString(err));
}

__device__ __forceinline__ float load(const void* data, std::int64_t i, bool is_half) {
  return is_half ? half_to_float(static_cast<const std::uint16_t*>(data)[i])
                 : static_cast<const float*>(data)[i];
}

__device__ __forceinline__ int float_key(float x) {
  unsigned int bits = __float_as_uint(x);
  if ((bits & 0x7fffffffu) == 0) bits = 0;  // -0.0 counts as +0.0, as on the CPU
  return order_key(bits);
}

__global__ void summary_kernel(const void* data, std::int64_t n, bool is_half, Summary* out) {
  unsigned int amax = 0;
  int mn = INT_MAX, mx = INT_MIN;
  unsigned long long nan = 0, nonfinite = 0;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float x = load(data, i, is_half);
    const unsigned int abits = __float_as_uint(x) & 0x7fffffffu;
    if (abits >= 0x7f800000u) {
      ++nonfinite;
      nan += abits > 0x7f800000u;
      continue;
    }
    amax = max(amax, abits);
    const int key = float_key(x);
    mn = min(mn, key);
    mx = max(mx, key);
  }
  for (int off = 16; off > 0; off >>= 1) {
    amax = max(amax, __shfl_down_sync(0xffffffffu, amax, off));
    mn = min(mn, __shfl_down_sync(0xffffffffu, mn, off));
    mx = max(mx, __shfl_down_sync(0xffffffffu, mx, off));
    nan += __shfl_down_sync(0xffffffffu, nan, off);
    nonfinite += __shfl_down_sync(0xffffffffu, nonfinite, off);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMax(&out->amax_bits, amax);
    atomicMin(&out->min_key, mn);
    atomicMax(&out->max_key, mx);
    atomicAdd(&out->nan, nan);
    atomicAdd(&out->nonfinite, nonfinite);
  }
}

__global__ void histogram_kernel(const void* data, std::int64_t n, bool is_half, double scale,
                                 std::uint32_t bins_per_side, bool empty_grid,
                                 unsigned long long* counts /* OUT, 2 * bins_per_side */) {
  // Every lane runs the same number of iterations so that warp-wide intrinsics see all 32 lanes.
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t warp_first = first - (threadIdx.x & 31);
  for (std::int64_t base = warp_first; base < n; base += stride) {
    const std::int64_t i = base + (threadIdx.x & 31);
    std::uint32_t bin = 0xffffffffu;  // no value
    if (i < n) {
      const float x = load(data, i, is_half);
      if (is_finite(x)) bin = empty_grid ? 0u : signed_bin(x, scale, bins_per_side);
    }
    const unsigned int same = __match_any_sync(0xffffffffu, bin);
    const int leader = __ffs(same) - 1;
    if (bin != 0xffffffffu && (threadIdx.x & 31) == static_cast<unsigned>(leader))
      atomicAdd(&counts[bin], static_cast<unsigned long long>(__popc(same)));
  }
}

// Device scratch reused across calls on the same thread (histograms are ~1 MiB).
struct Scratch {
  void* ptr = nullptr;
  std::size_t size = 0;
  ~Scratch() {
    if (ptr) cudaFree(ptr);
  }
  void* get(std::size_t bytes) {
    if (bytes > size) {
      if (ptr) cudaFree(ptr);
      ptr = nullptr;
      size = 0;
      check(cudaMalloc(&ptr, bytes), "cudaMalloc");
      size = bytes;
    }
    return ptr;
  }
};

}  // namespace

bool device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

void update_from_device(TensorStats& stats, const void* data, std::int64_t n, bool is_half) {
  if (n <= 0) throw StatsError("cannot update statistics with an empty array");
  thread_local Scratch scratch;
  const std::uint32_t g = static_cast<std::uint32_t>(stats.grid_bins());
  const std::size_t hist_bytes = 2ull * g * sizeof(unsigned long long);
  char* base = static_cast<char*>(scratch.get(hist_bytes + sizeof(Summary)));
  auto* counts = reinterpret_cast<unsigned long long*>(base);
  auto* summary = reinterpret_cast<Summary*>(base + hist_bytes);

  const int threads = 256;
  const int blocks = static_cast<int>(std::min<std::int64_t>((n + threads - 1) / threads, 4096));
  const Summary init{0u, INT_MAX, INT_MIN, 0ull, 0ull};
  check(cudaDeviceSynchronize(), "sync before update");  // producer streams have finished
  check(cudaMemcpy(summary, &init, sizeof init, cudaMemcpyHostToDevice), "copy");
  summary_kernel<<<blocks, threads>>>(data, n, is_half, summary);
  check(cudaGetLastError(), "summary kernel");
  Summary host{};
  check(cudaMemcpy(&host, summary, sizeof host, cudaMemcpyDeviceToHost), "copy");

  float amax, mn = 0.0f, mx = 0.0f;
  std::memcpy(&amax, &host.amax_bits, 4);
  const bool any_finite = host.nonfinite < static_cast<unsigned long long>(n);
  if (any_finite) {
    mn = key_float(host.min_key);
    mx = key_float(host.max_key);
  }
  // The grid the device counts on: the current one, grown if this data needs it.
  int exponent = stats.exponent();
  if (amax > 0.0f && (exponent == kEmptyExponent || static_cast<double>(amax) >= std::ldexp(1.0, exponent)))
    exponent = exponent_above(amax);
  int log2_grid = 0;
  while ((1u << log2_grid) < g) ++log2_grid;

  check(cudaMemset(counts, 0, hist_bytes), "memset");
  histogram_kernel<<<blocks, threads>>>(data, n, is_half, grid_scale(exponent, log2_grid), g,
                                        exponent == kEmptyExponent, counts);
  check(cudaGetLastError(), "histogram kernel");
  std::vector<count_t> host_counts(2ull * g);
  check(cudaMemcpy(host_counts.data(), counts, hist_bytes, cudaMemcpyDeviceToHost), "copy");
  const float inf = std::numeric_limits<float>::infinity();
  stats.absorb_counts(exponent, host_counts.data(), static_cast<count_t>(n), host.nan,
                      host.nonfinite - host.nan, any_finite ? mn : inf, any_finite ? mx : -inf);
}

}  // namespace cuda
}  // namespace ptq
