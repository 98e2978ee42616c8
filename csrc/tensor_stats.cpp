// Streaming statistics kernel.
//
// Data is walked once, in blocks of kBlock elements that stay in L1: a first loop over the block
// finds its finite |x| maximum, min/max and NaN/Inf counts (vectorised); if the maximum does not fit
// the grid, the grid grows (bins summed in pairs of pairs, exactly); a second loop over the
// still-cached block computes bin indices (vectorised) and a scalar loop increments the counts.
// Large inputs are split across threads, each with its own histogram, merged exactly at the end,
// so the result does not depend on the thread count.
#include "tensor_stats.h"

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "parallel.h"
#include "simd.h"

namespace ptq {
namespace {

constexpr std::int64_t kBlock = 4096;
// Below this many elements per thread, a thread's private histogram (zeroed, then merged: 2 MiB
// of traffic at the default grid) costs more than it saves; measured: 1M-value updates ran 10-14%
// slower on 2 threads with 2^18. Many small tensors are spread over threads by update_many instead.
constexpr std::int64_t kMinPerThread = 1 << 21;
// Channel runs shorter than this are not worth a block each (e.g. NHWC activations, axis -1).
constexpr std::int64_t kMinChannelRun = 256;

struct BlockSummary {
  float amax = 0.0f;
  float mn = std::numeric_limits<float>::infinity();
  float mx = -std::numeric_limits<float>::infinity();
  count_t nan = 0;
  count_t nonfinite = 0;
};

// Finite floats map to order-preserving int32 keys: non-negative bits stay, negative ones get
// all but the sign bit flipped. This inverts the mapping.
inline float key_float(std::int32_t key) {
  const std::uint32_t bits = static_cast<std::uint32_t>(key) ^ (static_cast<std::uint32_t>(key >> 31) >> 1);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Integer arithmetic on the bit patterns so the loop vectorises without -ffast-math:
// |x| bits below 0x7f800000 are finite, above it NaN, and finite keys order like the floats.
PTQ_HOT_LOOP void summarize_bits(const std::uint32_t* q, std::int32_t m,
                                  std::uint32_t* counts /* OUT: amax bits, nan, nonfinite */,
                                  std::int32_t* keys /* OUT: min key, max key */) {
  constexpr std::uint32_t kInfBits = 0x7f800000u;
  std::uint32_t amax = 0, nan = 0, nonfinite = 0;
  std::int32_t mn = INT32_MAX, mx = INT32_MIN;
  // Written with masks and plain ternaries: the shape GCC's vectoriser accepts.
  for (std::int32_t i = 0; i < m; ++i) {
    const std::uint32_t abits = q[i] & 0x7fffffffu;
    // -0.0 counts as +0.0 so min/max bits never depend on which zero came first.
    const std::uint32_t bits = q[i] & (0u - static_cast<std::uint32_t>(abits != 0));
    const std::uint32_t finmask = 0u - static_cast<std::uint32_t>(abits < kInfBits);
    nan += (abits > kInfBits);
    nonfinite += (abits >= kInfBits);
    const std::uint32_t a = abits & finmask;
    amax = amax > a ? amax : a;
    const std::uint32_t key =
        bits ^ (static_cast<std::uint32_t>(static_cast<std::int32_t>(bits) >> 31) >> 1);
    const std::int32_t kmin = static_cast<std::int32_t>((key & finmask) | (0x7fffffffu & ~finmask));
    const std::int32_t kmax = static_cast<std::int32_t>((key & finmask) | (0x80000000u & ~finmask));
    mn = mn < kmin ? mn : kmin;
    mx = mx > kmax ? mx : kmax;
  }
  counts[0] = amax;
  counts[1] = nan;
  counts[2] = nonfinite;
  keys[0] = mn;
  keys[1] = mx;
}

BlockSummary summarize(const float* q, std::int64_t m) {
  std::uint32_t counts[3];
  std::int32_t keys[2];
  summarize_bits(reinterpret_cast<const std::uint32_t*>(q), static_cast<std::int32_t>(m), counts,
                 keys);
  BlockSummary b;
  std::memcpy(&b.amax, &counts[0], 4);
  b.nan = counts[1];
  b.nonfinite = counts[2];
  if (b.nonfinite < static_cast<count_t>(m)) {
    b.mn = key_float(keys[0]);
    b.mx = key_float(keys[1]);
  }
  return b;
}

// Bin indices of an all-finite block, float path: exact while the grid scale is a normal float.
PTQ_HOT_LOOP void bin_indices_f32(const float* q, std::int64_t m, float scale, std::int32_t g,
                                  std::int32_t* idx /* OUT */) {
  for (std::int64_t i = 0; i < m; ++i) {
    const float x = q[i];
    std::int32_t b = static_cast<std::int32_t>(std::fabs(x) * scale);
    b = b < g ? b : g - 1;
    idx[i] = b + (x < 0.0f ? g : 0);
  }
}

void count_indices(const std::int32_t* idx, std::int64_t m, count_t* counts /* OUT */,
                   const float* next, std::int64_t next_len) {
  for (std::int64_t i = 0; i < m; ++i) {
    if ((i & 15) == 0 && i < next_len) __builtin_prefetch(next + i, 0, 3);
    ++counts[idx[i]];
  }
}

}  // namespace

std::int64_t TensorView::size() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

TensorStats::TensorStats(int num_bins, int grid_bins, int axis)
    : num_bins_(num_bins), grid_bins_(grid_bins), axis_(axis) {
  if (num_bins < 16 || num_bins > (1 << 20))
    throw StatsError("num_bins must be between 16 and 1048576, got " + std::to_string(num_bins));
  if (grid_bins < 2 * num_bins || grid_bins > (1 << 24) || (grid_bins & (grid_bins - 1)) != 0)
    throw StatsError("grid_bins must be a power of two >= 2 * num_bins and <= 2^24, got " +
                     std::to_string(grid_bins));
  log2_grid_ = 0;
  while ((1 << log2_grid_) < grid_bins) ++log2_grid_;
  s_ = fresh_state(0);
}

TensorStats::State TensorStats::fresh_state(std::size_t channels) const {
  State s;
  s.min = std::numeric_limits<float>::infinity();
  s.max = -std::numeric_limits<float>::infinity();
  s.channel_min.assign(channels, std::numeric_limits<float>::infinity());
  s.channel_max.assign(channels, -std::numeric_limits<float>::infinity());
  s.counts.assign(2 * static_cast<std::size_t>(grid_bins_), 0);
  return s;
}

double TensorStats::bin_width() const {
  return s_.exponent == kEmptyExponent ? 0.0 : std::ldexp(1.0, s_.exponent - log2_grid_);
}

float TensorStats::absmax() const {
  if (finite_count() == 0) return 0.0f;
  return std::max(std::fabs(s_.min), std::fabs(s_.max));
}

std::vector<count_t> TensorStats::abs_counts() const {
  std::vector<count_t> out(grid_bins_);
  for (int b = 0; b < grid_bins_; ++b) out[b] = s_.counts[b] + s_.counts[b + grid_bins_];
  return out;
}

void TensorStats::grow(State& s, int new_exponent) const {
  if (new_exponent <= s.exponent) return;
  const std::int64_t g = grid_bins_;
  const std::int64_t shift = s.exponent == kEmptyExponent
                                 ? static_cast<std::int64_t>(log2_grid_) + 1
                                 : static_cast<std::int64_t>(new_exponent) - s.exponent;
  for (int side = 0; side < 2; ++side) {
    count_t* c = s.counts.data() + side * g;
    if (shift > log2_grid_) {
      count_t total = 0;
      for (std::int64_t b = 0; b < g; ++b) total += c[b];
      std::fill(c, c + g, count_t{0});
      c[0] = total;
      continue;
    }
    const std::int64_t group = std::int64_t{1} << shift;
    // In place: new bin j reads old bins [j*group, (j+1)*group), all at or after j.
    for (std::int64_t j = 0; j < g / group; ++j) {
      count_t sum = 0;
      for (std::int64_t k = 0; k < group; ++k) sum += c[j * group + k];
      c[j] = sum;
    }
    std::fill(c + g / group, c + g, count_t{0});
  }
  s.exponent = new_exponent;
}

void TensorStats::absorb(State& into, const State& from) const {
  const int target = std::max(into.exponent, from.exponent);
  grow(into, target);
  const State* src = &from;
  State regridded;
  if (from.exponent < target) {
    regridded = from;
    grow(regridded, target);
    src = &regridded;
  }
  for (std::size_t b = 0; b < into.counts.size(); ++b) into.counts[b] += src->counts[b];
  into.count += from.count;
  into.nan_count += from.nan_count;
  into.inf_count += from.inf_count;
  into.min = std::min(into.min, from.min);
  into.max = std::max(into.max, from.max);
  for (std::size_t c = 0; c < into.channel_min.size(); ++c) {
    into.channel_min[c] = std::min(into.channel_min[c], from.channel_min[c]);
    into.channel_max[c] = std::max(into.channel_max[c], from.channel_max[c]);
  }
}

void TensorStats::process(State& s, const float* data, std::int64_t n,
                          std::int64_t channel) const {
  alignas(64) std::int32_t idx[kBlock];
  const std::int32_t g = grid_bins_;
  for (std::int64_t off = 0; off < n; off += kBlock) {
    const std::int64_t m = std::min(kBlock, n - off);
    const float* q = data + off;
    const BlockSummary b = summarize(q, m);
    s.count += static_cast<count_t>(m);
    s.nan_count += b.nan;
    s.inf_count += b.nonfinite - b.nan;
    s.min = std::min(s.min, b.mn);
    s.max = std::max(s.max, b.mx);
    if (channel >= 0) {
      s.channel_min[channel] = std::min(s.channel_min[channel], b.mn);
      s.channel_max[channel] = std::max(s.channel_max[channel], b.mx);
    }
    if (b.amax > 0.0f && (s.exponent == kEmptyExponent ||
                          static_cast<double>(b.amax) >= std::ldexp(1.0, s.exponent)))
      grow(s, exponent_above(b.amax));
    const double scale = grid_scale(s.exponent, log2_grid_);
    const bool float_exact = s.exponent != kEmptyExponent && scale <= static_cast<double>(FLT_MAX) &&
                             scale >= static_cast<double>(FLT_MIN);
    if (b.nonfinite == 0 && float_exact) {
      bin_indices_f32(q, m, static_cast<float>(scale), g, idx);
      const std::int64_t next_len = std::min(kBlock, n - off - m);
      count_indices(idx, m, s.counts.data(), q + m, next_len);
    } else {
      // Rare path: non-finite values in the block, or a grid so small/large that the float
      // multiplier would leave the normal range. Same bins, computed in double.
      for (std::int64_t i = 0; i < m; ++i) {
        const float x = q[i];
        if (!is_finite(x)) continue;
        if (s.exponent == kEmptyExponent) {  // only zeros so far
          ++s.counts[0];
          continue;
        }
        ++s.counts[signed_bin(x, scale, static_cast<std::uint32_t>(g))];
      }
    }
  }
}

void TensorStats::process_view(State& s, const TensorView& view, std::int64_t first_segment,
                               std::int64_t end_segment, std::int64_t segment_len,
                               std::int64_t channels) const {
  if (!view.is_half) {
    const float* base = static_cast<const float*>(view.data);
    for (std::int64_t seg = first_segment; seg < end_segment; ++seg)
      process(s, base + seg * segment_len, segment_len, channels > 0 ? seg % channels : -1);
    return;
  }
  // float16: converted a block at a time into a small buffer, then the float32 path.
  const half_bits_t* base = static_cast<const half_bits_t*>(view.data);
  std::vector<float> buf(static_cast<std::size_t>(std::min<std::int64_t>(segment_len, kBlock * 16)));
  for (std::int64_t seg = first_segment; seg < end_segment; ++seg) {
    const half_bits_t* src = base + seg * segment_len;
    for (std::int64_t off = 0; off < segment_len; off += static_cast<std::int64_t>(buf.size())) {
      const std::int64_t m = std::min<std::int64_t>(static_cast<std::int64_t>(buf.size()),
                                                    segment_len - off);
      for (std::int64_t i = 0; i < m; ++i) buf[i] = half_to_float(src[off + i]);
      process(s, buf.data(), m, channels > 0 ? seg % channels : -1);
    }
  }
}

void TensorStats::update(const TensorView& view, int threads) {
  const std::int64_t n = view.size();
  if (n <= 0) throw StatsError("cannot update statistics with an empty array");
  if (threads <= 0) threads = default_threads();

  std::int64_t channels = 0, inner = 1;
  if (axis_ != kNoAxis) {
    const int ndim = static_cast<int>(view.shape.size());
    const int ax = axis_ < 0 ? axis_ + ndim : axis_;
    if (ax < 0 || ax >= ndim)
      throw StatsError("axis " + std::to_string(axis_) + " is out of range for an array with " +
                       std::to_string(ndim) + " dimensions");
    channels = view.shape[ax];
    for (int d = ax + 1; d < ndim; ++d) inner *= view.shape[d];
    if (!s_.channel_min.empty() && static_cast<std::int64_t>(s_.channel_min.size()) != channels)
      throw StatsError("axis " + std::to_string(axis_) + " has " + std::to_string(channels) +
                       " channels, earlier updates had " + std::to_string(s_.channel_min.size()));
    if (s_.channel_min.empty()) {
      s_.channel_min.assign(channels, std::numeric_limits<float>::infinity());
      s_.channel_max.assign(channels, -std::numeric_limits<float>::infinity());
    }
  }
  // Segments are the units threads share: runs of one channel when those runs are long enough
  // to amortise a block's bookkeeping, otherwise slices of the flat range (channel min/max then
  // come from a separate strided pass).
  const bool channel_runs = channels > 0 && inner >= kMinChannelRun;
  const std::int64_t segment_len = channel_runs ? inner : std::min(n, kBlock * 64);
  const std::int64_t segments = n / segment_len;
  const std::int64_t seg_channels = channel_runs ? channels : 0;

  const std::int64_t useful = std::max<std::int64_t>(1, n / kMinPerThread);
  const int t_count = static_cast<int>(std::min<std::int64_t>({threads, useful, segments}));
  std::vector<State> parts(t_count > 1 ? t_count - 1 : 0);
  for (auto& p : parts) {
    p = fresh_state(s_.channel_min.size());
    p.exponent = s_.exponent;
  }
  parallel_run(t_count, [&](int t) {
    State& s = t == 0 ? s_ : parts[t - 1];
    const std::int64_t lo = segments * t / t_count, hi = segments * (t + 1) / t_count;
    process_view(s, view, lo, hi, segment_len, seg_channels);
  });
  if (segments * segment_len < n) {  // flat range not a multiple of segment_len
    const std::int64_t done = segments * segment_len;
    TensorView tail = view;
    tail.data = view.is_half ? static_cast<const void*>(static_cast<const half_bits_t*>(view.data) + done)
                             : static_cast<const void*>(static_cast<const float*>(view.data) + done);
    process_view(s_, tail, 0, 1, n - done, 0);
  }
  for (auto& p : parts) absorb(s_, p);
  if (channels > 0 && !channel_runs) channel_minmax_strided(view, channels, inner);
}

void TensorStats::channel_minmax_strided(const TensorView& view, std::int64_t channels,
                                         std::int64_t inner) {
  const std::int64_t n = view.size();
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = (view.is_half ? half_to_float(static_cast<const half_bits_t*>(view.data)[i])
                                  : static_cast<const float*>(view.data)[i]) + 0.0f;
    if (!is_finite(x)) continue;
    const std::int64_t c = (i / inner) % channels;
    s_.channel_min[c] = std::min(s_.channel_min[c], x);
    s_.channel_max[c] = std::max(s_.channel_max[c], x);
  }
}

void TensorStats::absorb_counts(int exponent, const count_t* signed_counts, count_t count,
                                count_t nan_count, count_t inf_count, float min, float max,
                                const float* channel_min, const float* channel_max,
                                std::size_t channels) {
  if (axis_ != kNoAxis && channels == 0)
    throw StatsError("per-channel statistics need the per-channel min/max of the counted data");
  if (axis_ == kNoAxis && channels != 0)
    throw StatsError("per-channel min/max given for statistics without an axis");
  if (exponent != kEmptyExponent && (exponent < -160 || exponent > 129))
    throw StatsError("grid exponent " + std::to_string(exponent) + " is out of range");
  if (channels != 0 && !s_.channel_min.empty() && s_.channel_min.size() != channels)
    throw StatsError("axis " + std::to_string(axis_) + " has " + std::to_string(channels) +
                     " channels, earlier updates had " + std::to_string(s_.channel_min.size()));
  if (channels != 0 && s_.channel_min.empty()) {
    s_.channel_min.assign(channels, std::numeric_limits<float>::infinity());
    s_.channel_max.assign(channels, -std::numeric_limits<float>::infinity());
  }
  State part = fresh_state(channels);
  if (channels != 0) {
    std::copy(channel_min, channel_min + channels, part.channel_min.begin());
    std::copy(channel_max, channel_max + channels, part.channel_max.begin());
  }
  part.exponent = exponent;
  std::copy(signed_counts, signed_counts + part.counts.size(), part.counts.begin());
  part.count = count;
  part.nan_count = nan_count;
  part.inf_count = inf_count;
  part.min = min;
  part.max = max;
  absorb(s_, part);
}

void TensorStats::merge(const TensorStats& other) {
  if (other.num_bins_ != num_bins_ || other.grid_bins_ != grid_bins_ || other.axis_ != axis_)
    throw StatsError("cannot merge statistics with different num_bins, grid_bins or axis");
  if (!s_.channel_min.empty() && !other.s_.channel_min.empty() &&
      s_.channel_min.size() != other.s_.channel_min.size())
    throw StatsError("cannot merge statistics with different channel counts");
  if (s_.channel_min.empty() && !other.s_.channel_min.empty()) {
    s_.channel_min.assign(other.s_.channel_min.size(), std::numeric_limits<float>::infinity());
    s_.channel_max.assign(other.s_.channel_min.size(), -std::numeric_limits<float>::infinity());
  }
  State from = other.s_;
  if (from.channel_min.empty()) {
    from.channel_min.assign(s_.channel_min.size(), std::numeric_limits<float>::infinity());
    from.channel_max.assign(s_.channel_min.size(), -std::numeric_limits<float>::infinity());
  }
  absorb(s_, from);
}

}  // namespace ptq
