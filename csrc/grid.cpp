// Grid kernels (see grid.h).
//
// The summary and the bin indices are computed by loops that GCC vectorises (integer arithmetic
// on the float bit patterns, masks instead of branches; simd.h compiles them for AVX2 too); the
// count increments are a scalar loop over the indices, prefetching the next block.
#include "grid.h"

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>

#include "checks.h"
#include "simd.h"

namespace ptq {
namespace {

// Integer arithmetic on the bit patterns so the loop vectorises without -ffast-math:
// |x| bits below 0x7f800000 are finite, above it NaN, and order keys (binning.h) order like the
// floats.
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
    const std::uint32_t key = flip_negative(bits);
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

void count_indices(const std::int32_t* idx, std::int64_t m, const float* next,
                   std::int64_t next_len, count_t* counts /* OUT */) {
  for (std::int64_t i = 0; i < m; ++i) {
    if ((i & 15) == 0 && i < next_len) __builtin_prefetch(next + i, 0, 3);
    ++counts[idx[i]];
  }
}

// One side of the grid (g = 2^log2_grid bins) grown by 2^shift, in place.
void grow_side(count_t* c, std::int64_t log2_grid, std::int64_t shift) {
  const std::int64_t g = std::int64_t{1} << log2_grid;
  if (shift > log2_grid) {  // everything lands in bin 0
    count_t total = 0;
    for (std::int64_t b = 0; b < g; ++b) total += c[b];
    std::fill(c, c + g, count_t{0});
    c[0] = total;
    return;
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

}  // namespace

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

void bin_block(const float* q, std::int64_t m, int exponent, int log2_grid, bool all_finite,
               std::int32_t* idx, const float* next, std::int64_t next_len,
               count_t* signed_counts /* OUT */) {
  const std::int32_t g = std::int32_t{1} << log2_grid;
  const double scale = grid_scale(exponent, log2_grid);
  const bool float_exact = exponent != kEmptyExponent && scale <= static_cast<double>(FLT_MAX) &&
                           scale >= static_cast<double>(FLT_MIN);
  if (all_finite && float_exact) {
    bin_indices_f32(q, m, static_cast<float>(scale), g, idx);
    count_indices(idx, m, next, next_len, signed_counts);
    return;
  }
  // Rare path: non-finite values in the block, or a grid so small/large that the float
  // multiplier would leave the normal range. Same bins, computed in double.
  for (std::int64_t i = 0; i < m; ++i) {
    const float x = q[i];
    if (!is_finite(x)) continue;
    if (exponent == kEmptyExponent) {  // only zeros so far
      ++signed_counts[0];
      continue;
    }
    ++signed_counts[signed_bin(x, scale, static_cast<std::uint32_t>(g))];
  }
}

void grow_grid(int log2_grid, int old_exponent, int new_exponent,
               count_t* signed_counts /* IN/OUT */) {
  if (new_exponent <= old_exponent) return;
  // From the empty grid (only zeros seen) every count moves to bin 0, which is where it was.
  const std::int64_t shift = old_exponent == kEmptyExponent
                                 ? static_cast<std::int64_t>(log2_grid) + 1
                                 : static_cast<std::int64_t>(new_exponent) - old_exponent;
  const std::int64_t g = std::int64_t{1} << log2_grid;
  grow_side(signed_counts, log2_grid, shift);
  grow_side(signed_counts + g, log2_grid, shift);
}

int log2_of_grid(std::int64_t grid_bins) {
  check(grid_bins >= 2 && grid_bins <= kMaxGridBins && (grid_bins & (grid_bins - 1)) == 0,
        "grid_bins must be a power of two in [2, 2^24], got " + std::to_string(grid_bins));
  int log2_grid = 0;
  while ((std::int64_t{1} << log2_grid) < grid_bins) ++log2_grid;
  return log2_grid;
}

namespace {
int checked_exponent(std::int64_t exponent) {
  check(exponent >= INT32_MIN && exponent <= INT32_MAX && valid_exponent(static_cast<int>(exponent)),
        "grid exponent " + std::to_string(exponent) + " is out of range");
  return static_cast<int>(exponent);
}
}  // namespace

void bin_values(const float* x, std::int64_t n, std::int64_t exponent_requested,
                std::int64_t grid_bins, count_t* signed_counts /* OUT */,
                std::int64_t counts_size) {
  const int log2_grid = log2_of_grid(grid_bins);
  const int exponent = checked_exponent(exponent_requested);
  check(counts_size == 2 * grid_bins, "counts must have 2 * grid_bins entries");
  check(n >= 0, "negative size");
  check_aligned(x, "values");
  check_aligned(signed_counts, "counts");
  alignas(64) std::int32_t idx[kBlock];
  for (std::int64_t off = 0; off < n; off += kBlock) {
    const std::int64_t m = std::min(kBlock, n - off);
    const BlockSummary b = summarize(x + off, m);
    const bool fits = b.amax == 0.0f || (exponent != kEmptyExponent &&
                                         static_cast<double>(b.amax) < std::ldexp(1.0, exponent));
    check(fits, "a value does not fit the grid of exponent " + std::to_string(exponent));
    bin_block(x + off, m, exponent, log2_grid, b.nonfinite == 0, idx, x + off + m,
              std::min(kBlock, n - off - m), signed_counts);
  }
}

void grow_counts(std::int64_t old_exponent, std::int64_t new_exponent,
                 count_t* signed_counts /* IN/OUT */, std::int64_t counts_size) {
  check(counts_size % 2 == 0, "a signed grid has an even number of counts");
  const int log2_grid = log2_of_grid(counts_size / 2);
  const int from = checked_exponent(old_exponent), to = checked_exponent(new_exponent);
  check(to >= from, "a grid only grows");
  check_aligned(signed_counts, "counts");
  grow_grid(log2_grid, from, to, signed_counts);
}

}  // namespace ptq
