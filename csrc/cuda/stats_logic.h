// Decisions of the device statistics kernels (stats_kernels.cu), as __host__ __device__ code so
// that tests/native/device_emulator.cpp runs the very same decisions on the CPU.
//
// One update of a set of tensors is four launches on one stream, with no host synchronisation:
//   1. count (main pass): every value below the tensor's current grid top 2^E is counted on that
//      grid; min/max, NaN and Inf counts are taken; values at or above 2^E are only noted (they
//      move the max). Counts go to a block's shared-memory window where the values crowd (the low
//      bins of each side), to registers for the hot bins (exact zeros; the bins of the max and
//      min: ReLU6's 6.0), and to global 64-bit atomics for the sparse rest.
//   2. channel extremes (only for tensors with an axis).
//   3. grow: a tensor whose max passed 2^E gets its grid grown exactly (bins summed in groups of
//      2^d, as TensorStats::grow) and remembers the old top.
//   4. count (recount pass): for grown tensors only, values at or above the old top are counted
//      on the new grid. Values counted before stay valid: growth is exact (binning.h).
// Every finite value is thus counted exactly once, on the grid of the final exponent after growth,
// which is what the CPU computes: the bytes of to_host() equal the CPU's for any batching.
#pragma once
#include "binning.h"

namespace ptq {
namespace gpu {

using u64 = unsigned long long;

// Min/max travel as order keys (binning.h). -0.0 has key -1 and is read back as +0.0 (the CPU
// counts -0.0 as +0.0 too).
using ptq::key_bits;
using ptq::order_key;
constexpr int kKeyPlusInf = 0x7f800000;                    // order_key(+inf): "no minimum yet"
constexpr int kKeyMinusInf = static_cast<int>(0x807fffffu);  // order_key(-inf): "no maximum yet"
constexpr uint32_t kNoRecount = 0xffffffffu;
constexpr uint32_t kNoHot = 0x80000000u;  // never a signed bin index (those are < 2^24 or >= 2^32 - 2^24)

// One tensor's statistics on the device, 64 bytes (pyengine/gpu/layout.py mirrors it).
struct TensorState {
  u64 count;               // every element seen
  u64 nan_count;
  u64 inf_count;
  u64 counts_offset;       // its 2 * 2^log2_bins counts in the set's counts buffer (fixed)
  int min_key;             // smallest finite value seen (kKeyPlusInf when none)
  int max_key;             // largest (kKeyMinusInf when none)
  int route_min_key;       // min/max as of the last grow launch: what count passes route by,
  int route_max_key;       //   fixed while they run, so every block decides alike
  int exponent;            // grid exponent: finite |x| < 2^exponent (kEmptyExponent: only zeros)
  uint32_t recount_lo;     // threshold_bits of the grid before this update's growth, or kNoRecount
  int log2_bins;           // bins per side = 2^log2_bins (fixed)
  uint32_t reserved;
};

// One tensor of one update, 64 bytes (pyengine/gpu/layout.py builds these).
struct WorkEntry {
  u64 data;                // device address of size contiguous values
  u64 size;                // elements, >= 1
  u64 start;               // sum of the sizes of the entries before it: its place in the launch
  u64 inner;               // per-channel tensors: elements per channel run (product of the
                           //   dimensions after the axis); 0 otherwise
  u64 channel_keys;        // per-channel tensors: device address of channels min keys, then
                           //   channels max keys; 0 otherwise
  uint32_t tensor;         // index of its TensorState
  uint32_t flags;          // kFlagHalf
  uint32_t channels;       // size of the axis dimension (0: no axis)
  uint32_t reserved[3];
};
constexpr uint32_t kFlagHalf = 1u;

#if !defined(__CUDACC_RTC__)
static_assert(sizeof(TensorState) == 64 && sizeof(WorkEntry) == 64, "layout shared with Python");
#endif

// --- splitting a launch among blocks -----------------------------------------------------------
// Block b of nb takes the elements [first(b), first(b + 1)) of the launch (all entries end to end):
// contiguous ranges, so a tensor is shared by as few blocks as possible.
PTQ_HD inline u64 block_first(u64 block, u64 blocks, u64 total) { return total * block / blocks; }

// The entry holding launch position pos: the last one whose start is <= pos (starts increase).
PTQ_HD inline uint32_t find_entry(const WorkEntry* work, uint32_t num_work, u64 pos) {
  uint32_t lo = 0, hi = num_work;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (work[mid].start <= pos) lo = mid; else hi = mid;
  }
  return lo;
}

// Shared-memory window bins worth using for a stretch of `values` values: zeroing and flushing a
// window costs a pass over it, so a block sizes it to what it counts.
PTQ_HD inline uint32_t window_for(u64 values, uint32_t capacity, uint32_t values_per_bin) {
  const u64 w = values / (values_per_bin ? values_per_bin : 1u);
  return w < capacity ? static_cast<uint32_t>(w) : capacity;
}

// --- what one block does with one entry (an "item": its share of one tensor) --------------------
struct ItemPlan {
  bool skip;               // recount pass of a tensor that did not grow
  uint32_t lo, span;       // a value is counted here iff abits - lo < span (unsigned)
  int exponent, log2_bins;
  bool use_scale;          // scaled_bin() is exact on this grid
  float scale;
  uint32_t window_neg;     // shared slot = signed index + window_neg, counted there if < window_total;
  uint32_t window_total;   //   signed index: bin for x >= 0, ~bin for x < 0
  uint32_t hot_pos, hot_neg;  // signed indices counted in registers (the bins of max and min)
  uint32_t bins;           // per side
  u64 counts_offset;
};

PTQ_HD inline uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

// Bins below the hot bin of one side: the window stops there (the hot bin has its register).
PTQ_HD inline uint32_t side_limit(bool seen, bool present, uint32_t extreme_abits, uint32_t top,
                                  const ItemPlan& p, uint32_t* hot /* OUT, signed index */, bool negative) {
  *hot = kNoHot;
  if (!seen) return p.bins;    // nothing seen yet: no preference
  if (!present) return 0u;     // no value of this sign so far
  if (extreme_abits >= top) return p.bins;  // cannot happen for route keys; stay safe
  const uint32_t bin = p.use_scale ? scaled_bin(bits_float(extreme_abits), p.scale)
                                   : bin_of_abits(extreme_abits, p.exponent, p.log2_bins);
  *hot = negative ? ~bin : bin;
  return bin;
}

PTQ_HD inline ItemPlan plan_item(const TensorState& s, bool main_pass, u64 item_values,
                                 uint32_t capacity, uint32_t values_per_bin) {
  ItemPlan p{};
  p.exponent = s.exponent;
  p.log2_bins = s.log2_bins;
  p.bins = 1u << s.log2_bins;
  p.counts_offset = s.counts_offset;
  p.hot_pos = p.hot_neg = kNoHot;
  const uint32_t top = threshold_bits(s.exponent);
  if (main_pass) {
    p.lo = 0;
    p.span = top;
  } else {
    p.skip = s.recount_lo == kNoRecount;
    p.lo = p.skip ? 0u : s.recount_lo;
    p.span = p.skip ? 0u : top - s.recount_lo;
  }
  if (p.skip || s.exponent == kEmptyExponent) return p;  // empty grid: zeros only, no bins
  p.use_scale = scaled_bin_is_exact(s.exponent, s.log2_bins);
  p.scale = p.use_scale ? bin_scale(s.exponent, s.log2_bins) : 0.0f;

  const bool seen = s.route_min_key <= s.route_max_key;
  const uint32_t max_bits = key_bits(s.route_max_key), min_bits = key_bits(s.route_min_key);
  const bool has_pos = s.route_max_key > 0;    // a value > +0 was seen
  const bool has_neg = s.route_min_key < -1;   // a value < -0 was seen (key(-0) == -1)
  const uint32_t pos_limit = side_limit(seen, has_pos, max_bits & 0x7fffffffu, top, p, &p.hot_pos, false);
  const uint32_t neg_limit = side_limit(seen, has_neg, min_bits & 0x7fffffffu, top, p, &p.hot_neg, true);

  const uint32_t cap = window_for(item_values, capacity, values_per_bin);
  uint32_t wp, wn;
  if (pos_limit > 0 && neg_limit > 0) {  // both signs: half each, the rest to whoever needs it
    wp = min_u32(pos_limit, cap / 2);
    wn = min_u32(neg_limit, cap - wp);
    wp = min_u32(pos_limit, cap - wn);
  } else {
    wp = min_u32(pos_limit, cap);
    wn = min_u32(neg_limit, cap - wp);
  }
  p.window_neg = wn;
  p.window_total = wp + wn;
  return p;
}

// Index into the tensor's counts (2 * bins, non-negative side first) of a window slot.
PTQ_HD inline u64 slot_counts_index(uint32_t slot, const ItemPlan& p) {
  return slot < p.window_neg ? static_cast<u64>(p.bins) + (p.window_neg - 1u - slot) : slot - p.window_neg;
}
// Index into the tensor's counts of a signed index (hot bins).
PTQ_HD inline u64 signed_counts_index(uint32_t signed_index, const ItemPlan& p) {
  return (signed_index & 0x80000000u) ? static_cast<u64>(p.bins) + ~signed_index : signed_index;
}

// One value (float32 bits; float16 is widened first) into a Sink: the device's sink does shared
// and global atomics, the emulator's plain increments. kMain and kScale are p's pass and
// p.use_scale, as template arguments so that the device loop keeps only what it needs in
// registers (the main pass has lo == 0).
#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#pragma nv_exec_check_disable
#endif
template <bool kMain, bool kScale, class Sink>
PTQ_HD inline void count_value(uint32_t bits, const ItemPlan& p, Sink& sink) {
  const uint32_t abits = bits & 0x7fffffffu;
  if ((kMain ? abits : abits - p.lo) < p.span) {
    if (abits == 0) {
      sink.zero();
    } else {
      const uint32_t bin = kScale ? scaled_bin(bits_float(abits), p.scale)
                                  : bin_of_abits(abits, p.exponent, p.log2_bins);
      const uint32_t neg = static_cast<uint32_t>(static_cast<int>(bits) >> 31);  // 0 or ~0
      const uint32_t signed_index = bin ^ neg;
      const uint32_t slot = signed_index + p.window_neg;
      if (slot < p.window_total) {
        sink.window(slot);
      } else if (signed_index == p.hot_pos) {
        sink.hot_pos();
      } else if (signed_index == p.hot_neg) {
        sink.hot_neg();
      } else {
        sink.global(bin + (neg & p.bins));  // index into the tensor's counts
      }
    }
  } else if (kMain && abits >= kInfBits) {
    sink.nonfinite(abits > kInfBits);
  }
  if (kMain && abits < kInfBits) sink.extremes(order_key(bits));
}

// Which elements of [a, b) a block reads as scalars and which as 16-byte vectors: vectors start at
// the first 16-byte aligned address (data addresses are multiples of the element size).
struct ItemSplit {
  u64 head;     // scalars at [a, a + head)
  u64 vectors;  // then vectors of 16 / element_size elements
  u64 tail;     // then scalars up to b
};
PTQ_HD inline ItemSplit split_item(u64 data, u64 a, u64 b, uint32_t element_size) {
  const uint32_t per_vector = 16u / element_size;
  const u64 address = data + a * element_size;
  const u64 to_aligned = ((16u - (address & 15u)) & 15u) / element_size;
  ItemSplit s;
  s.head = to_aligned < b - a ? to_aligned : b - a;
  s.vectors = (b - a - s.head) / per_vector;
  s.tail = b - a - s.head - s.vectors * per_vector;
  return s;
}

// --- growth -------------------------------------------------------------------------------------
struct GrowPlan {
  bool grows;
  int new_exponent;
  uint32_t shift;  // bins merge in groups of 2^shift (shift <= log2_bins: all into bin 0 at most)
};

// The CPU's rule (TensorStats::process): grow when a non-zero finite absmax reaches 2^E.
PTQ_HD inline GrowPlan plan_growth(int exponent, int min_key, int max_key, int log2_bins) {
  GrowPlan g{false, exponent, 0u};
  if (min_key > max_key) return g;  // no finite value
  const uint32_t a = key_bits(min_key) & 0x7fffffffu, b = key_bits(max_key) & 0x7fffffffu;
  const uint32_t amax = a > b ? a : b;
  if (amax == 0 || (exponent != kEmptyExponent && amax < threshold_bits(exponent))) return g;
  g.grows = true;
  g.new_exponent = exponent_above_bits(amax);
  const int d = exponent == kEmptyExponent ? log2_bins : g.new_exponent - exponent;
  g.shift = static_cast<uint32_t>(d < log2_bins ? d : log2_bins);
  return g;
}

// --- per-channel extremes -----------------------------------------------------------------------
// Channel of element i is (i / inner) % channels; a thread stepping by `stride` elements updates it
// without dividing (one division per item, at the start).
struct ChannelCursor {
  u64 within;       // i % inner
  uint32_t channel; // (i / inner) % channels
  u64 step_within;  // stride % inner
  uint32_t step_channel;  // (stride / inner) % channels
};
PTQ_HD inline ChannelCursor channel_cursor(u64 i, u64 stride, u64 inner, uint32_t channels) {
  ChannelCursor c;
  c.within = i % inner;
  c.channel = static_cast<uint32_t>((i / inner) % channels);
  c.step_within = stride % inner;
  c.step_channel = static_cast<uint32_t>((stride / inner) % channels);
  return c;
}
PTQ_HD inline void advance(ChannelCursor& c, u64 inner, uint32_t channels) {
  c.within += c.step_within;
  uint32_t ch = c.channel + c.step_channel;  // < 2 * channels
  if (c.within >= inner) {
    c.within -= inner;
    ++ch;
  }
  c.channel = ch >= channels ? ch - channels : ch;
}

}  // namespace gpu
}  // namespace ptq
