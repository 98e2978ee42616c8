// The invariants of a TensorStats state, checked where a state comes from outside: statistics
// bytes (from_bytes) and counts made elsewhere (absorb_counts). Every update and merge keeps
// them; a state that breaks one could not have come from real data.
#include <cmath>
#include <limits>

#include "tensor_stats.h"

namespace ptq {
namespace {

// Highest bin with a count on one side of the signed grid, or -1.
std::int64_t last_used_bin(const count_t* c, std::int64_t g) {
  for (std::int64_t b = g - 1; b >= 0; --b)
    if (c[b] != 0) return b;
  return -1;
}

bool empty_range(float lo, float hi) {
  return lo == std::numeric_limits<float>::infinity() && hi == -std::numeric_limits<float>::infinity();
}

bool finite_range(float lo, float hi) { return std::isfinite(lo) && std::isfinite(hi) && lo <= hi; }

}  // namespace

// Throws StatsError naming the first broken invariant.
void TensorStats::check_state(const State& s, bool minimal_grid) const {
  check(s.nan_count <= s.count && s.inf_count <= s.count - s.nan_count,
        "NaN and Inf counts exceed the count");
  count_t binned = 0;
  // One pass over up to 2^25 counts: plain branches (check() would build its message string for
  // every bin, which made loading a large empty grid take seconds).
  bool overflow = false, too_large = false;
  for (count_t c : s.counts) {
    too_large |= c > kMaxBinCount;
    overflow |= __builtin_add_overflow(binned, c, &binned);
  }
  check(!too_large, "a histogram bin holds 2^63 values or more");
  check(!overflow, "histogram counts overflow");
  check(binned == s.finite_count(), "histogram counts do not sum to the finite count");
  check(axis_ != kNoAxis || s.channel_min.empty(), "channel ranges without an axis");
  const bool any = s.finite_count() > 0;
  check(any ? finite_range(s.min, s.max) : empty_range(s.min, s.max), "min/max");
  for (std::size_t c = 0; c < s.channel_min.size(); ++c) {
    const float lo = s.channel_min[c], hi = s.channel_max[c];
    check(empty_range(lo, hi) || (any && finite_range(lo, hi) && lo >= s.min && hi <= s.max),
          "channel min/max");
  }
  // The grid holds absmax (and is the smallest that does, for a whole object); no count lies
  // beyond min or max.
  const float absmax = s.absmax();
  const int needed = absmax > 0.0f ? exponent_above(absmax) : kEmptyExponent;
  check(minimal_grid ? s.exponent == needed : s.exponent >= needed,
        "grid exponent does not match the range");
  const double scale = grid_scale(s.exponent, log2_grid_);
  const auto g = static_cast<std::uint32_t>(grid_bins_);
  const auto bin_of = [&](float x) -> std::int64_t {
    return s.exponent == kEmptyExponent ? 0 : signed_bin(std::fabs(x), scale, g);
  };
  const std::int64_t pos_last = last_used_bin(s.counts.data(), g);
  const std::int64_t neg_last = last_used_bin(s.counts.data() + g, g);
  check(pos_last == (any && s.max >= 0.0f ? bin_of(s.max) : -1) &&
            neg_last == (any && s.min < 0.0f ? bin_of(s.min) : -1),
        "histogram extends beyond min/max");
}

}  // namespace ptq
