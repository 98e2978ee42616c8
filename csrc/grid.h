// Kernels on the power-of-two histogram grid (binning.h explains why the grid is exact). Plain
// functions on caller-allocated arrays, outputs last and marked OUT, in scikit-learn's manner;
// each has a naive NumPy twin in tests/naive_kernels.py that the tests compare it with.
//
// A signed grid of G = 2^log2_grid bins per sign is one array of 2G counts: [0, G) for x >= 0,
// [G, 2G) for x < 0, bin b of |x| covering [b, b + 1) * 2^exponent / G.
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>

#include "binning.h"
#include "checks.h"
#include "dtypes.h"

namespace ptq {

// Values are walked in blocks of kBlock elements, small enough to stay in L1 between the
// summary pass and the binning pass over the same block.
constexpr std::int64_t kBlock = 4096;

// Grid exponents a finite float32 can need: exponent_above(2^-149) .. exponent_above(FLT_MAX).
constexpr int kMinExponent = -148;
constexpr int kMaxExponent = 128;

inline bool valid_exponent(int exponent) {
  return exponent == kEmptyExponent || (exponent >= kMinExponent && exponent <= kMaxExponent);
}

// What one pass over a block finds: finite |x| maximum, finite min/max (+-0 counted as +0),
// NaN count and non-finite (NaN + Inf) count. mn/mx stay +inf/-inf when nothing is finite.
struct BlockSummary {
  float amax = 0.0f;
  float mn = std::numeric_limits<float>::infinity();
  float mx = -std::numeric_limits<float>::infinity();
  count_t nan = 0;
  count_t nonfinite = 0;
};

// m <= kBlock values.
BlockSummary summarize(const float* q, std::int64_t m);

// Adds the grid bins of m <= kBlock values to counts. The grid of `exponent` must hold every
// finite value (|x| < 2^exponent; only zeros when exponent is kEmptyExponent). all_finite
// selects the vectorised path; idx is scratch of kBlock entries; next/next_len name the data
// the caller reads after this block, to prefetch.
void bin_block(const float* q, std::int64_t m, int exponent, int log2_grid, bool all_finite,
               std::int32_t* idx, const float* next, std::int64_t next_len,
               count_t* signed_counts /* OUT: 2G counts, added to */);

// Grows a signed grid from old_exponent to new_exponent >= old_exponent in place: new bin j of
// each side is the sum of old bins [j, j + 1) * 2^(new - old), which is exact.
void grow_grid(int log2_grid, int old_exponent, int new_exponent,
               count_t* signed_counts /* IN/OUT: 2G counts */);

// Checked entry points for the bindings' `kernels` module, which tests compare with NumPy twins:
// every size and exponent comes from outside and is validated, then the kernels above run.
// log2 of grid_bins; throws unless it is a power of two in [2, kMaxGridBins].
int log2_of_grid(std::int64_t grid_bins);
// The grid bins of n values of any length, all on the grid of `exponent` (the binning of update
// without its bookkeeping). Throws when a finite value does not fit the grid.
void bin_values(const float* x, std::int64_t n, std::int64_t exponent, std::int64_t grid_bins,
                count_t* signed_counts /* OUT: 2 * grid_bins counts, added to */,
                std::int64_t counts_size);
// grow_grid on a signed grid of counts_size / 2 bins per sign.
void grow_counts(std::int64_t old_exponent, std::int64_t new_exponent,
                 count_t* signed_counts /* IN/OUT */, std::int64_t counts_size);

}  // namespace ptq
