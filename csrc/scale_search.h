// Scale search: from a tensor's statistics to a clipping threshold (amax) or an asymmetric range.
//
// Conventions (documented here once; the Python docs point to this file):
// - Symmetric searches run on the "search histogram": num_bins bins of |x| over [0, absmax], the
//   grid used by TensorRT's EntropyCalibration2 and ModelOpt. It is re-binned from the exact
//   power-of-two grid by splitting each grid bin's count in proportion to its overlap (values are
//   taken as uniform inside a grid bin; the grid bin holding absmax is cut at absmax). With
//   grid_bins >= 16 * num_bins this tracks the exact [0, absmax] histogram to within a fraction
//   of a bin.
// - entropy: for each candidate i = start_bin, start_bin + stride, ... <= num_bins:
//   P = bins[0:i] with sum(bins[i:]) added to P[i-1]; Q = bins[0:i] (outliers NOT folded, as
//   Migacz's slides, ModelOpt and MXNet build it) merged into num_quantized_bins groups (bin j in
//   group floor(j * nq / i)), each group's total spread evenly over the group's bins that are
//   non-zero in P; bins zero in P stay zero. KL(P||Q) on the normalised P and Q. Where P > 0 meets
//   Q = 0 (outliers folded into an empty last group) the divergence is infinite. (Building Q from
//   the folded P instead would make candidate i = nq lossless, KL = 0, and always chosen.)
//   Ties: the LAST minimum (larger threshold), as ModelOpt.
//   Threshold = i * bin width (the upper edge of the last bin in P).
// - percentile: on the exact grid; the smallest grid edge e with count(|x| < e) >= p% of the
//   finite values, capped at absmax. 100 gives absmax.
// - mse: candidates at search-bin centres (i + 0.5) * w for i >= start_bin; bin centres are
//   fake-quantised with scale c / qmax (qmax = 2^(bits-1) - 1), clamped to [0, qmax]; squared error
//   weighted by counts; the FIRST minimum.
// - Asymmetric ranges include 0; zero point = round-half-even(qmin - lo / scale), clamped.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor_stats.h"

namespace ptq {

// Kernel: the signed grid's |x| counts re-binned to num_bins bins over [0, absmax] (above).
// bin_width is the grid's; every count must lie below absmax's grid bin edge. absmax == 0 puts
// bin 0 of both sides in out[0].
void rebin_to_search(const count_t* signed_counts, std::int64_t grid_bins, double bin_width,
                     double absmax, std::int64_t num_bins, double* out /* OUT: num_bins */);

// rebin_to_search with every argument checked: the bindings' `kernels` entry point (tests).
// The grid has counts_size / 2 bins per sign and the given exponent.
void rebin_counts(const count_t* signed_counts, std::int64_t counts_size, std::int64_t exponent,
                  double absmax, std::int64_t num_bins, double* out /* OUT: num_bins */);

// Every integer argument is checked here (StatsError), whatever the caller checked before.
std::vector<double> search_histogram(const TensorStats& stats, std::int64_t num_bins);

double amax_percentile(const TensorStats& stats, double percentile);
// zero_bin_from_neighbour: bin 0 takes bin 1's count before the search (ModelOpt's convention, so
// the spike of exact zeros in ReLU outputs does not dominate the divergence).
double amax_entropy(const TensorStats& stats, std::int64_t num_quantized_bins,
                    std::int64_t start_bin, std::int64_t stride, bool zero_bin_from_neighbour);
double amax_mse(const TensorStats& stats, std::int64_t num_bits, std::int64_t start_bin);
// The same searches on a given |x| histogram whose bins all have width bin_width: 1 to 2^20
// finite, non-negative counts, a finite positive width.
double amax_entropy(const std::vector<double>& bins, double bin_width,
                    std::int64_t num_quantized_bins, std::int64_t start_bin, std::int64_t stride);
double amax_mse(const std::vector<double>& bins, double bin_width, std::int64_t num_bits,
                std::int64_t start_bin);
// KL divergence per candidate (for plots and tests); +inf where undefined. Index k is candidate
// start_bin + k * stride.
std::vector<double> entropy_curve(const std::vector<double>& bins, std::int64_t num_quantized_bins,
                                  std::int64_t start_bin, std::int64_t stride);

struct AsymmetricRange {
  double lo, hi, scale;
  long long zero_point;
  long long qmin, qmax;
};
// lo/hi percentiles of the signed values (pass 100 for min/max).
AsymmetricRange asymmetric_range(const TensorStats& stats, double percentile,
                                 std::int64_t num_bits, bool is_signed);

}  // namespace ptq
