// Statistics of many device tensors per launch (see stats_logic.h for the four launches of one
// update and why the result equals the CPU's bit for bit).
//
// Compiled at run time by NVRTC through CuPy (pyengine/gpu/kernels.py), so it includes nothing
// but binning.h and stats_logic.h; nvcc compiles it too (tests/test_gpu_stats.py).
//
// Why it is fast: a value costs one 16-byte-vector read (streamed past L2, which keeps the global
// counts), a few integer operations and, for most values, one shared-memory atomic. Global (L2)
// atomics per value top out near 240-315 GB/s on an H200 (shared/REFERENCES.md), so only the
// sparse tail of each tensor's histogram (bins above the block's window) goes there; the hot
// bins (zeros, the clip value at the max or min) count in registers. A block owns contiguous
// stretches of the launch, so it flushes its window (one atomic per non-zero bin) once per tensor
// it touches, not per chunk.
#include "binning.h"
#include "stats_logic.h"

#ifndef PTQ_THREADS
#define PTQ_THREADS 1024  // threads per block of the count kernels
#endif
#ifndef PTQ_MIN_BLOCKS
#define PTQ_MIN_BLOCKS 1  // blocks per multiprocessor the register budget must allow
#endif
#ifndef PTQ_UNROLL
#define PTQ_UNROLL 4  // 16-byte loads in flight per thread
#endif

namespace ptq {
namespace gpu {
namespace {

__device__ __forceinline__ u64 min_u64(u64 a, u64 b) { return a < b ? a : b; }

__device__ __forceinline__ uint32_t widen_half(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));  // exact; no .ftz: subnormal halves stay
  return __float_as_uint(f);
}

template <bool kHalf>
__device__ __forceinline__ uint32_t load_bits(u64 data, u64 i) {
  if (kHalf) return widen_half(__ldcs(reinterpret_cast<const unsigned short*>(data) + i));
  return __ldcs(reinterpret_cast<const unsigned int*>(data) + i);
}

// Per-thread counters of one item; see count_value() for which value goes where.
struct ThreadSink {
  unsigned int* shared_bins;
  u64* counts;  // this tensor's 2 * bins counts
  uint32_t zeros = 0, hot_p = 0, hot_n = 0, nans = 0, infs = 0;
  int min_key = kKeyPlusInf, max_key = kKeyMinusInf;

  __device__ ThreadSink(unsigned int* shared, u64* global) : shared_bins(shared), counts(global) {}
  __device__ __forceinline__ void zero() { ++zeros; }
  __device__ __forceinline__ void window(uint32_t slot) { atomicAdd(shared_bins + slot, 1u); }
  __device__ __forceinline__ void hot_pos() { ++hot_p; }
  __device__ __forceinline__ void hot_neg() { ++hot_n; }
  __device__ __forceinline__ void global(u64 index) { atomicAdd(counts + index, 1ull); }
  __device__ __forceinline__ void nonfinite(bool is_nan) {
    if (is_nan) ++nans; else ++infs;
  }
  __device__ __forceinline__ void extremes(int key) {
    min_key = min(min_key, key);
    max_key = max(max_key, key);
  }
};

template <bool kMain, bool kScale, bool kHalf>
__device__ __forceinline__ void count_vector(const uint4& v, const ItemPlan& p, ThreadSink& sink) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (kHalf) {
      count_value<kMain, kScale>(widen_half(static_cast<unsigned short>(words[k] & 0xffffu)), p, sink);
      count_value<kMain, kScale>(widen_half(static_cast<unsigned short>(words[k] >> 16)), p, sink);
    } else {
      count_value<kMain, kScale>(words[k], p, sink);
    }
  }
}

// This block's share [a, b) of one entry: scalars up to 16-byte alignment, then PTQ_UNROLL
// vectors in flight per thread, then the scalar tail (split_item()).
template <bool kMain, bool kScale, bool kHalf>
__device__ void count_item(const WorkEntry& e, u64 a, u64 b, const ItemPlan& p, ThreadSink& sink) {
  constexpr uint32_t kSize = kHalf ? 2u : 4u;
  const ItemSplit split = split_item(e.data, a, b, kSize);
  const uint32_t tid = threadIdx.x, threads = blockDim.x;
  for (u64 i = tid; i < split.head; i += threads)
    count_value<kMain, kScale>(load_bits<kHalf>(e.data, a + i), p, sink);
  const uint4* v = reinterpret_cast<const uint4*>(e.data + (a + split.head) * kSize) + tid;
  const uint4* const end = reinterpret_cast<const uint4*>(e.data + (a + split.head) * kSize) + split.vectors;
  for (; v + (PTQ_UNROLL - 1) * threads < end; v += PTQ_UNROLL * threads) {
    uint4 x[PTQ_UNROLL];
#pragma unroll
    for (int k = 0; k < PTQ_UNROLL; ++k) x[k] = __ldcs(v + k * threads);
#pragma unroll
    for (int k = 0; k < PTQ_UNROLL; ++k) count_vector<kMain, kScale, kHalf>(x[k], p, sink);
  }
  for (; v < end; v += threads) count_vector<kMain, kScale, kHalf>(__ldcs(v), p, sink);
  const u64 tail = a + split.head + split.vectors * (16u / kSize);
  for (u64 j = tid; j < split.tail; j += threads)
    count_value<kMain, kScale>(load_bits<kHalf>(e.data, tail + j), p, sink);
}

template <bool kMain>
__device__ void count_item_any(const WorkEntry& e, u64 a, u64 b, const ItemPlan& p, ThreadSink& sink) {
  const bool half = (e.flags & kFlagHalf) != 0;
  if (p.use_scale) {
    if (half) count_item<kMain, true, true>(e, a, b, p, sink); else count_item<kMain, true, false>(e, a, b, p, sink);
  } else {
    if (half) count_item<kMain, false, true>(e, a, b, p, sink); else count_item<kMain, false, false>(e, a, b, p, sink);
  }
}

struct WarpPartial {
  unsigned int zeros, hot_p, hot_n, nans, infs;
  int min_key, max_key;
  unsigned int unused;
};

// Moves one item's counts out of the block: registers reduced per warp then by thread 0; the
// window one atomic per non-zero slot, zeroed on the way for the next item.
__device__ void flush_item(ThreadSink& s, const ItemPlan& p, TensorState& state, u64 item_values,
                           bool main_pass, unsigned int* window, WarpPartial* partial) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    s.zeros += __shfl_xor_sync(0xffffffffu, s.zeros, off);
    s.hot_p += __shfl_xor_sync(0xffffffffu, s.hot_p, off);
    s.hot_n += __shfl_xor_sync(0xffffffffu, s.hot_n, off);
    s.nans += __shfl_xor_sync(0xffffffffu, s.nans, off);
    s.infs += __shfl_xor_sync(0xffffffffu, s.infs, off);
    s.min_key = min(s.min_key, __shfl_xor_sync(0xffffffffu, s.min_key, off));
    s.max_key = max(s.max_key, __shfl_xor_sync(0xffffffffu, s.max_key, off));
  }
  if ((threadIdx.x & 31u) == 0) partial[threadIdx.x >> 5] = {s.zeros, s.hot_p, s.hot_n, s.nans, s.infs, s.min_key, s.max_key, 0u};
  __syncthreads();  // partials written, every shared-window atomic of the item done
  for (uint32_t slot = threadIdx.x; slot < p.window_total; slot += blockDim.x) {
    const unsigned int c = window[slot];
    if (c != 0) {
      window[slot] = 0;
      atomicAdd(s.counts + slot_counts_index(slot, p), static_cast<u64>(c));
    }
  }
  if (threadIdx.x == 0) {
    WarpPartial t = partial[0];
    for (uint32_t w = 1; w < blockDim.x / 32; ++w) {
      t.zeros += partial[w].zeros;
      t.hot_p += partial[w].hot_p;
      t.hot_n += partial[w].hot_n;
      t.nans += partial[w].nans;
      t.infs += partial[w].infs;
      t.min_key = min(t.min_key, partial[w].min_key);
      t.max_key = max(t.max_key, partial[w].max_key);
    }
    if (t.zeros) atomicAdd(s.counts, static_cast<u64>(t.zeros));  // bin 0, non-negative side
    if (t.hot_p) atomicAdd(s.counts + signed_counts_index(p.hot_pos, p), static_cast<u64>(t.hot_p));
    if (t.hot_n) atomicAdd(s.counts + signed_counts_index(p.hot_neg, p), static_cast<u64>(t.hot_n));
    if (main_pass) {
      atomicAdd(&state.count, item_values);
      if (t.nans) atomicAdd(&state.nan_count, static_cast<u64>(t.nans));
      if (t.infs) atomicAdd(&state.inf_count, static_cast<u64>(t.infs));
      if (t.min_key != kKeyPlusInf) atomicMin(&state.min_key, t.min_key);
      if (t.max_key != kKeyMinusInf) atomicMax(&state.max_key, t.max_key);
    }
  }
  __syncthreads();  // window clean and partials free before the next item
}

// In place, as TensorStats::grow: new bin j = sum of old bins [j * 2^shift, (j + 1) * 2^shift).
// Rounds of new bins: a round reads only old bins at or beyond every bin written so far, and
// writes after a barrier, so no value is read after it was overwritten.
__device__ void grow_counts(u64* c, uint32_t bins, uint32_t shift) {
  const uint32_t group = 1u << shift, new_bins = bins >> shift;
  const uint32_t lanes = group < 32u ? group : 32u;  // threads summing one new bin
  const uint32_t per_round = blockDim.x / lanes;
  const uint32_t sub = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  for (uint32_t side = 0; side < 2; ++side) {
    u64* cs = c + static_cast<u64>(side) * bins;
    for (uint32_t r0 = 0; r0 < new_bins; r0 += per_round) {
      const uint32_t j = r0 + sub;
      u64 sum = 0;
      if (j < new_bins)
        for (uint32_t k = lane; k < group; k += lanes) sum += cs[static_cast<u64>(j) * group + k];
      for (uint32_t off = lanes / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      __syncthreads();
      if (j < new_bins && lane == 0) cs[j] = sum;
      __syncthreads();
    }
    for (uint32_t k = new_bins + threadIdx.x; k < bins; k += blockDim.x) cs[k] = 0;
  }
}

__device__ __forceinline__ void flush_channel(int* keys, uint32_t channels, uint32_t c, int mn, int mx) {
  if (mn != kKeyPlusInf) atomicMin(keys + c, mn);
  if (mx != kKeyMinusInf) atomicMax(keys + channels + c, mx);
}

template <bool kHalf>
__device__ void channel_item(const WorkEntry& e, u64 a, u64 b, int* keys) {
  const uint32_t channels = e.channels;
  ChannelCursor cur = channel_cursor(a + threadIdx.x, blockDim.x, e.inner, channels);
  uint32_t run_channel = cur.channel;
  int mn = kKeyPlusInf, mx = kKeyMinusInf;
  for (u64 i = a + threadIdx.x; i < b; i += blockDim.x) {
    if (cur.channel != run_channel) {  // a thread keeps one channel's extremes while it stays there
      flush_channel(keys, channels, run_channel, mn, mx);
      run_channel = cur.channel;
      mn = kKeyPlusInf;
      mx = kKeyMinusInf;
    }
    const uint32_t bits = load_bits<kHalf>(e.data, i);
    if ((bits & 0x7fffffffu) < kInfBits) {
      const int key = order_key(bits);
      mn = min(mn, key);
      mx = max(mx, key);
    }
    advance(cur, e.inner, channels);
  }
  flush_channel(keys, channels, run_channel, mn, mx);
}

}  // namespace
}  // namespace gpu
}  // namespace ptq

using ptq::gpu::u64;
using ptq::uint32_t;

// Launches 1 and 4: main_pass != 0 counts values below each tensor's grid top, 0 recounts the
// values of grown tensors from their old top. Dynamic shared memory: capacity * 4 bytes.
extern "C" __global__ void __launch_bounds__(PTQ_THREADS, PTQ_MIN_BLOCKS)
ptq_count(const ptq::gpu::WorkEntry* work, unsigned int num_work, u64 total,
          ptq::gpu::TensorState* states, u64* counts, unsigned int capacity,
          unsigned int values_per_bin, int main_pass) {
  using namespace ptq::gpu;
  extern __shared__ unsigned int window[];
  __shared__ WarpPartial partial[PTQ_THREADS / 32];
  const u64 first = block_first(blockIdx.x, gridDim.x, total);
  const u64 last = block_first(blockIdx.x + 1, gridDim.x, total);
  if (first >= last) return;  // block-uniform
  const uint32_t used = window_for(last - first, capacity, values_per_bin);
  for (uint32_t i = threadIdx.x; i < used; i += blockDim.x) window[i] = 0;
  __syncthreads();
  uint32_t w = find_entry(work, num_work, first);
  for (u64 pos = first; pos < last; ++w) {
    const WorkEntry& e = work[w];
    const u64 end = min_u64(last, e.start + e.size);
    const u64 a = pos - e.start, b = end - e.start;
    const ItemPlan p = plan_item(states[e.tensor], main_pass != 0, b - a, capacity, values_per_bin);
    if (!p.skip) {
      ThreadSink sink(window, counts + p.counts_offset);
      if (main_pass) count_item_any<true>(e, a, b, p, sink); else count_item_any<false>(e, a, b, p, sink);
      flush_item(sink, p, states[e.tensor], b - a, main_pass != 0, window, partial);
    }
    pos = end;
  }
}

// Launch 2, over the entries of tensors with an axis (their own start values): per-channel
// min/max keys. Channel extremes gather in shared memory when 2 * channels <= capacity.
extern "C" __global__ void __launch_bounds__(PTQ_THREADS, PTQ_MIN_BLOCKS)
ptq_channel_extremes(const ptq::gpu::WorkEntry* work, unsigned int num_work, u64 total,
                     unsigned int capacity) {
  using namespace ptq::gpu;
  extern __shared__ int shared_keys[];
  const u64 first = block_first(blockIdx.x, gridDim.x, total);
  const u64 last = block_first(blockIdx.x + 1, gridDim.x, total);
  if (first >= last) return;
  uint32_t w = find_entry(work, num_work, first);
  for (u64 pos = first; pos < last; ++w) {
    const WorkEntry& e = work[w];
    const u64 end = min_u64(last, e.start + e.size);
    const u64 a = pos - e.start, b = end - e.start;
    const uint32_t channels = e.channels;
    int* global_keys = reinterpret_cast<int*>(e.channel_keys);
    const bool local = 2ull * channels <= capacity;  // block-uniform
    if (local) {
      for (uint32_t i = threadIdx.x; i < 2u * channels; i += blockDim.x)
        shared_keys[i] = i < channels ? kKeyPlusInf : kKeyMinusInf;
      __syncthreads();
    }
    int* keys = local ? shared_keys : global_keys;
    if (e.flags & kFlagHalf) channel_item<true>(e, a, b, keys); else channel_item<false>(e, a, b, keys);
    if (local) {
      __syncthreads();
      for (uint32_t c = threadIdx.x; c < channels; c += blockDim.x)
        flush_channel(global_keys, channels, c, shared_keys[c], shared_keys[channels + c]);
      __syncthreads();
    }
    pos = end;
  }
}

// Launch 3, one block per entry: grows the grid of a tensor whose max passed its top, records
// the old top for the recount pass, and fixes the route keys the next count passes decide by.
extern "C" __global__ void __launch_bounds__(PTQ_THREADS)
ptq_grow(const ptq::gpu::WorkEntry* work, ptq::gpu::TensorState* states, u64* counts) {
  using namespace ptq::gpu;
  TensorState& s = states[work[blockIdx.x].tensor];
  const int old_exponent = s.exponent, log2_bins = s.log2_bins;
  const int min_key = s.min_key, max_key = s.max_key;
  const u64 offset = s.counts_offset;
  const GrowPlan g = plan_growth(old_exponent, min_key, max_key, log2_bins);
  __syncthreads();  // every thread has read the state before thread 0 rewrites it
  if (g.grows) grow_counts(counts + offset, 1u << log2_bins, g.shift);
  if (threadIdx.x == 0) {
    s.exponent = g.new_exponent;
    s.recount_lo = g.grows ? ptq::threshold_bits(old_exponent) : kNoRecount;
    s.route_min_key = min_key;
    s.route_max_key = max_key;
  }
}
