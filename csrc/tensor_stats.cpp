// Streaming statistics kernel.
//
// Data is walked once, in blocks of kBlock elements that stay in L1 (grid.h): a first loop over
// the block finds its finite |x| maximum, min/max and NaN/Inf counts (vectorised); if the
// maximum does not fit the grid, the grid grows (bins summed in pairs of pairs, exactly); a
// second loop over the still-cached block computes bin indices (vectorised) and a scalar loop
// increments the counts. Large inputs are split across threads, each with its own histogram,
// merged exactly at the end, so the result does not depend on the thread count.
#include "tensor_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "parallel.h"

namespace ptq {
namespace {

// Below this many elements per thread, a thread's private histogram (zeroed, then merged: 2 MiB
// of traffic at the default grid) costs more than it saves; measured: 1M-value updates ran 10-14%
// slower on 2 threads with 2^18. Many small tensors are spread over threads by update_many instead.
constexpr std::int64_t kMinPerThread = 1 << 21;
// Channel runs shorter than this are not worth a block each (e.g. NHWC activations, axis -1).
constexpr std::int64_t kMinChannelRun = 256;

int check_grid_bins(std::int64_t grid_bins, int num_bins) {
  if (grid_bins < 2 * static_cast<std::int64_t>(num_bins) || grid_bins > kMaxGridBins ||
      (grid_bins & (grid_bins - 1)) != 0)
    throw StatsError("grid_bins must be a power of two >= 2 * num_bins and <= 2^24, got " +
                     std::to_string(grid_bins));
  return static_cast<int>(grid_bins);
}

int check_axis(std::int64_t axis) {
  if (axis == TensorStats::kNoAxis) return TensorStats::kNoAxis;
  return check_int(axis, -kMaxAxis, kMaxAxis - 1, "axis");
}

}  // namespace

std::int64_t TensorView::size() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

void TensorView::check() const {
  check_int(static_cast<std::int64_t>(shape.size()), 0, kMaxAxis, "array dimensions");
  std::int64_t n = 1;
  for (auto d : shape) {
    if (d < 0 || (d > 0 && n > std::numeric_limits<std::int64_t>::max() / d))
      throw StatsError("array shape is invalid");
    n *= d;
  }
  if (n == 0) throw StatsError("cannot update statistics with an empty array");
  const std::uintptr_t item = is_half ? sizeof(half_bits_t) : sizeof(float);
  if (data == nullptr || reinterpret_cast<std::uintptr_t>(data) % item != 0)
    throw StatsError("array data must be aligned to its element size");
}

float TensorStats::State::absmax() const {
  if (finite_count() == 0) return 0.0f;
  return std::max(std::fabs(min), std::fabs(max));
}

TensorStats::TensorStats(std::int64_t num_bins, std::int64_t grid_bins, std::int64_t axis)
    : num_bins_(check_int(num_bins, kMinNumBins, kMaxNumBins, "num_bins")),
      grid_bins_(check_grid_bins(grid_bins, num_bins_)),
      axis_(check_axis(axis)) {
  log2_grid_ = 0;
  while ((1 << log2_grid_) < grid_bins_) ++log2_grid_;
  s_ = fresh_state(0);
}

TensorStats::TensorStats(const TensorStats& other)
    : num_bins_(other.num_bins_),
      grid_bins_(other.grid_bins_),
      log2_grid_(other.log2_grid_),
      axis_(other.axis_),
      s_(other.snapshot()) {}

// Only temporaries are moved (a value returned from from_bytes): no other thread can see them.
TensorStats::TensorStats(TensorStats&& other) noexcept
    : num_bins_(other.num_bins_),
      grid_bins_(other.grid_bins_),
      log2_grid_(other.log2_grid_),
      axis_(other.axis_),
      s_(std::move(other.s_)) {}

TensorStats::State TensorStats::fresh_state(std::size_t channels) const {
  State s;
  s.min = std::numeric_limits<float>::infinity();
  s.max = -std::numeric_limits<float>::infinity();
  s.channel_min.assign(channels, std::numeric_limits<float>::infinity());
  s.channel_max.assign(channels, -std::numeric_limits<float>::infinity());
  s.counts.assign(2 * static_cast<std::size_t>(grid_bins_), 0);
  return s;
}

double TensorStats::bin_width_of(int exponent) const {
  return exponent == kEmptyExponent ? 0.0 : std::ldexp(1.0, exponent - log2_grid_);
}

int TensorStats::exponent() const { return read([](const State& s) { return s.exponent; }); }
double TensorStats::bin_width() const { return bin_width_of(exponent()); }
count_t TensorStats::count() const { return read([](const State& s) { return s.count; }); }
count_t TensorStats::finite_count() const { return read([](const State& s) { return s.finite_count(); }); }
count_t TensorStats::nan_count() const { return read([](const State& s) { return s.nan_count; }); }
count_t TensorStats::inf_count() const { return read([](const State& s) { return s.inf_count; }); }
float TensorStats::min() const { return read([](const State& s) { return s.min; }); }
float TensorStats::max() const { return read([](const State& s) { return s.max; }); }
float TensorStats::absmax() const { return read([](const State& s) { return s.absmax(); }); }
std::vector<float> TensorStats::channel_min() const { return read([](const State& s) { return s.channel_min; }); }
std::vector<float> TensorStats::channel_max() const { return read([](const State& s) { return s.channel_max; }); }
std::vector<count_t> TensorStats::signed_counts() const { return read([](const State& s) { return s.counts; }); }
TensorStats::State TensorStats::snapshot() const { return read([](const State& s) { return s; }); }

std::vector<count_t> TensorStats::abs_counts() const {
  std::vector<count_t> out(grid_bins_);
  read([&](const State& s) {
    for (int b = 0; b < grid_bins_; ++b) out[b] = s.counts[b] + s.counts[b + grid_bins_];
    return 0;
  });
  return out;
}

namespace {

// The scalar counters of into + from, checked: every counter stays below 2^64 (StatsError
// otherwise, before anything changes).
void add_counters(TensorStats::State& into, const TensorStats::State& from) {
  const count_t count = checked_add(into.count, from.count, "the value count");
  into.nan_count = checked_add(into.nan_count, from.nan_count, "the NaN count");
  into.inf_count = checked_add(into.inf_count, from.inf_count, "the Inf count");
  into.count = count;
}

}  // namespace

// from is brought onto into's grid in place (callers own it). Throws StatsError, leaving into
// unchanged, when a counter would wrap or a bin would reach 2^63 (kMaxBinCount).
void TensorStats::absorb(State& into, State& from) const {
  checked_add(into.count, from.count, "the value count");  // NaN/Inf/finite counts are below it
  // A grown bin holds at most its side's finite values, so below 2^63 finite values together no
  // bin can pass the limit: the common case adds in place.
  const bool bins_may_pass = into.finite_count() + from.finite_count() > kMaxBinCount;
  State checked;
  State& out = bins_may_pass ? (checked = into) : into;
  const int target = std::max(out.exponent, from.exponent);
  grow_grid(log2_grid_, out.exponent, target, out.counts.data());
  out.exponent = target;
  grow_grid(log2_grid_, from.exponent, target, from.counts.data());
  from.exponent = target;
  for (std::size_t b = 0; b < out.counts.size(); ++b) {
    out.counts[b] += from.counts[b];
    if (bins_may_pass && (out.counts[b] < from.counts[b] || out.counts[b] > kMaxBinCount))
      throw StatsError("a histogram bin would hold 2^63 values or more");
  }
  add_counters(out, from);
  out.min = std::min(out.min, from.min);
  out.max = std::max(out.max, from.max);
  for (std::size_t c = 0; c < out.channel_min.size(); ++c) {
    out.channel_min[c] = std::min(out.channel_min[c], from.channel_min[c]);
    out.channel_max[c] = std::max(out.channel_max[c], from.channel_max[c]);
  }
  if (bins_may_pass) into = std::move(checked);
}

// Per-channel data of `channels` channels (0: none) against s's channel ranges: s takes that many
// empty channels when it has none yet; a different count is an error.
void TensorStats::match_channels(State& s, std::size_t channels) const {
  if (channels == 0) return;
  if (s.channel_min.empty()) {
    s.channel_min.assign(channels, std::numeric_limits<float>::infinity());
    s.channel_max.assign(channels, -std::numeric_limits<float>::infinity());
    return;
  }
  if (s.channel_min.size() != channels)
    throw StatsError("axis " + std::to_string(axis_) + " has " + std::to_string(channels) +
                     " channels, earlier updates had " + std::to_string(s.channel_min.size()));
}

void TensorStats::process(State& s, const float* data, std::int64_t n,
                          std::int64_t channel) const {
  alignas(64) std::int32_t idx[kBlock];
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
                          static_cast<double>(b.amax) >= std::ldexp(1.0, s.exponent))) {
      const int grown = exponent_above(b.amax);
      grow_grid(log2_grid_, s.exponent, grown, s.counts.data());
      s.exponent = grown;
    }
    bin_block(q, m, s.exponent, log2_grid_, b.nonfinite == 0, idx, q + m,
              std::min(kBlock, n - off - m), s.counts.data());
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

void TensorStats::update(const TensorView& view, std::int64_t threads_requested) {
  view.check();
  int threads = check_threads(threads_requested);
  if (threads == 0) threads = default_threads();
  const std::int64_t n = view.size();
  std::lock_guard<std::mutex> lock(mutex_);
  // Checked once here rather than per block: with count + n below 2^64 no counter of this update
  // wraps, and with fewer than 2^63 finite values no bin can reach kMaxBinCount.
  checked_add(s_.count, static_cast<count_t>(n), "the value count");
  check(s_.finite_count() <= kMaxBinCount - static_cast<count_t>(n),
        "the finite count would reach 2^63: a histogram bin could pass its limit");

  std::int64_t channels = 0, inner = 1;
  if (axis_ != kNoAxis) {
    const int ndim = static_cast<int>(view.shape.size());
    const int ax = axis_ < 0 ? axis_ + ndim : axis_;
    if (ax < 0 || ax >= ndim)
      throw StatsError("axis " + std::to_string(axis_) + " is out of range for an array with " +
                       std::to_string(ndim) + " dimensions");
    channels = view.shape[ax];
    for (int d = ax + 1; d < ndim; ++d) inner *= view.shape[d];
    match_channels(s_, static_cast<std::size_t>(channels));
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
  absorb_counts(Counts{exponent, signed_counts, 2 * static_cast<std::size_t>(grid_bins_), count,
                       nan_count, inf_count, min, max, channel_min, channels, channel_max, channels});
}

void TensorStats::absorb_counts(const Counts& c) {
  check(c.signed_counts_size == 2 * static_cast<std::size_t>(grid_bins_),
        "absorb_counts needs 2 * grid_bins counts");
  check(c.channel_min_size == c.channel_max_size,
        "absorb_counts needs channel_min and channel_max of one size");
  const std::size_t channels = c.channel_min_size;
  check(axis_ == kNoAxis || channels > 0,
        "per-channel statistics need the per-channel min/max of the counted data");
  check(axis_ != kNoAxis || channels == 0, "per-channel min/max given for statistics without an axis");
  check(c.exponent >= kEmptyExponent && c.exponent <= kMaxExponent &&
            valid_exponent(static_cast<int>(c.exponent)),
        "grid exponent " + std::to_string(c.exponent) + " is out of range");
  State part = fresh_state(channels);
  part.exponent = static_cast<int>(c.exponent);
  std::copy(c.signed_counts, c.signed_counts + part.counts.size(), part.counts.begin());
  std::copy(c.channel_min, c.channel_min + channels, part.channel_min.begin());
  std::copy(c.channel_max, c.channel_max + channels, part.channel_max.begin());
  part.count = c.count;
  part.nan_count = c.nan_count;
  part.inf_count = c.inf_count;
  part.min = c.min;
  part.max = c.max;
  try {
    check_state(part, false);
  } catch (const StatsError& e) {
    throw StatsError(std::string("counted statistics are inconsistent (") + e.what() + ")");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  // The part may be counted on a larger grid than its own values need (the current grid of this
  // object, say), but the sum must end on the smallest grid that holds its range, as every update
  // and merge does: otherwise its own bytes would not load (from_bytes checks exactly that).
  const float absmax = std::max(s_.absmax(), part.absmax());
  const int needed = absmax > 0.0f ? exponent_above(absmax) : kEmptyExponent;
  check(std::max(s_.exponent, part.exponent) == needed,
        "counted statistics are inconsistent (grid exponent " + std::to_string(part.exponent) +
            " is larger than the values need, " + std::to_string(needed) + ")");
  match_channels(s_, channels);  // every check above comes first: a bad part changes nothing
  absorb(s_, part);
}

void TensorStats::merge(const TensorStats& other) {
  if (other.num_bins_ != num_bins_ || other.grid_bins_ != grid_bins_ || other.axis_ != axis_)
    throw StatsError("cannot merge statistics with different num_bins, grid_bins or axis");
  State from = other.snapshot();  // other's lock only, released before ours is taken
  std::lock_guard<std::mutex> lock(mutex_);
  const bool adopts_channels = s_.channel_min.empty() && !from.channel_min.empty();
  match_channels(s_, from.channel_min.size());
  match_channels(from, s_.channel_min.size());
  try {
    absorb(s_, from);
  } catch (const StatsError&) {  // a counter limit: leave s_ as it was
    if (adopts_channels) s_.channel_min.clear(), s_.channel_max.clear();
    throw;
  }
}

}  // namespace ptq
