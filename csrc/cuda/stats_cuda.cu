// Statistics of device-resident data in two kernels, mirroring the CPU's two loops:
// 1. summary: finite |x| maximum, min/max as order-preserving int keys, NaN/non-finite counts,
//    reduced per warp and combined with integer atomics (exact, order-independent);
// 2. histogram: each finite value's signed bin from binning.h, counted with 64-bit atomics.
//    Lanes of a warp that hit the same bin (the zero bin of a ReLU output) are aggregated with
//    __match_any_sync first, so one atomic per distinct bin per warp.
// The host grows the grid between the two, then folds the device counts in with absorb_counts.
#include "cuda/stats_cuda.h"

#include <cuda.h>  // driver types only: the driver is reached through the runtime's entry points
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

// cuMemGetAddressRange, found through the runtime (the extension links no libcuda); null if absent.
using AddressRange = CUresult (*)(CUdeviceptr*, std::size_t*, CUdeviceptr);

AddressRange address_range() {
  static const AddressRange fn = [] {
    void* found = nullptr;
#if CUDART_VERSION >= 12000
    cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &found, 12000, cudaEnableDefault, &status);
#else
    cudaError_t err = cudaGetDriverEntryPoint("cuMemGetAddressRange", &found, cudaEnableDefault, &status);
#endif
    if (err == cudaSuccess && status != cudaDriverEntryPointSuccess) err = cudaErrorSymbolNotFound;
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuMemGetAddressRange", &found, cudaEnableDefault);
#endif
    if (err != cudaSuccess) cudaGetLastError();
    return err == cudaSuccess ? reinterpret_cast<AddressRange>(found) : nullptr;
  }();
  return fn;
}

// The bindings hand over a bare integer (a Python wrapper that checks it can be bypassed), and a
// kernel reading an address that is not mapped faults and loses the process's CUDA context. So:
// the address must be device (or managed) memory of the current device, and every byte of
// [data, data + bytes) allocated. Ranges are followed end to end, as a tensor may span several
// allocations mapped back to back (virtual memory management, e.g. PyTorch's expandable segments).
void check_device_input(const void* data, std::size_t bytes) {
  const auto at = reinterpret_cast<std::uintptr_t>(data);
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cudaPointerAttributes attrs{};
  const cudaError_t err = cudaPointerGetAttributes(&attrs, data);
  if (err != cudaSuccess) cudaGetLastError();  // not sticky: do not leave it to the next call
  if (err != cudaSuccess || attrs.device != device ||
      (attrs.type != cudaMemoryTypeDevice && attrs.type != cudaMemoryTypeManaged))
    throw StatsError("address " + hex_address(at) + " is not memory of the current CUDA device (" +
                     std::to_string(device) + ")" +
                     (err != cudaSuccess ? std::string(": ") + cudaGetErrorString(err) : ""));
  const AddressRange range = address_range();
  if (range == nullptr)
    throw StatsError("CUDA: the driver offers no cuMemGetAddressRange to check the array's size");
  for (std::uintptr_t next = at, end = at + bytes; next < end;) {  // at + bytes: checked to fit
    CUdeviceptr base = 0;
    std::size_t size = 0;
    if (range(&base, &size, static_cast<CUdeviceptr>(next)) != CUDA_SUCCESS || base + size <= next)
      throw StatsError(std::to_string(bytes) + " bytes from device address " + hex_address(at) +
                       " run past the memory allocated there");
    next = static_cast<std::uintptr_t>(base + size);
  }
}

}  // namespace

bool device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

void update_from_device(TensorStats& stats, const void* data, std::int64_t n, bool is_half) {
  const std::size_t bytes = device_input_bytes(reinterpret_cast<std::uintptr_t>(data), n, is_half);
  check(cudaDeviceSynchronize(), "sync before update");  // producer streams have finished
  check_device_input(data, bytes);
  thread_local Scratch scratch;
  const std::uint32_t g = static_cast<std::uint32_t>(stats.grid_bins());
  const std::size_t hist_bytes = 2ull * g * sizeof(unsigned long long);
  char* base = static_cast<char*>(scratch.get(hist_bytes + sizeof(Summary)));
  auto* counts = reinterpret_cast<unsigned long long*>(base);
  auto* summary = reinterpret_cast<Summary*>(base + hist_bytes);

  const int threads = 256;
  const int blocks = static_cast<int>(std::min<std::int64_t>((n + threads - 1) / threads, 4096));
  const Summary init{0u, INT_MAX, INT_MIN, 0ull, 0ull};
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
