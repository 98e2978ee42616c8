// Scale searches on a given |x| histogram (entropy, mse). Conventions are documented in
// scale_search.h; searches on a TensorStats (scale_search.cpp) re-bin it and come here.
//
// Entropy in O(num_quantized_bins) per candidate instead of O(i): with T the total count and S the
// count inside the candidate range (P sums to T, Q to S),
//   KL = (1/T) [ sum_j P_j log P_j - sum_j P_j log Q_j ] - log T + log S.
// The first sum is a prefix sum plus the folded last bin; within a group g every non-zero bin has
// the same Q = total_g / nonzero_g, so the second sum is sum_g total_g log(total_g / nonzero_g)
// plus the outliers' share in the last bin. The curve agrees with the O(n^2) NumPy transcription
// to ~1e-13.
#include "scale_search.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "simd.h"

namespace ptq {
namespace {

// A histogram given from outside: its size bounds the work (entropy O(n * nq), mse O(n^2)), and
// a negative or non-finite count would make logs and sums meaningless.
void check_bins(const std::vector<double>& bins, double bin_width) {
  check_int(static_cast<std::int64_t>(bins.size()), 1, kMaxNumBins, "histogram size");
  for (double b : bins) check(std::isfinite(b) && b >= 0.0, "histogram counts must be finite and >= 0");
  check(std::isfinite(bin_width) && bin_width > 0.0, "bin_width must be finite and > 0");
}


// Natural log for positive normal doubles, to ~1 ulp of std::log, written so loops over arrays
// vectorise: x = m * 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m-1)/(m+1),
// |s| < 0.172 so z = s^2 < 0.0295, series to s^19 (the first term left out, z^10 / 21, is below
// 3e-17 relative: under double rounding).
inline double log_vectorisable(double x) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, 8);
  // Biased exponent as a double without an int -> double conversion (AVX2 has none for 64-bit
  // lanes): place it in the mantissa of 2^52 and subtract 2^52.
  const std::uint64_t ebits = 0x4330000000000000ULL | (bits >> 52);
  double biased;
  std::memcpy(&biased, &ebits, 8);
  biased -= 4503599627370496.0;
  const std::uint64_t mbits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
  double m;
  std::memcpy(&m, &mbits, 8);
  const double big = m > 1.4142135623730951 ? 1.0 : 0.0;
  m = m * (1.0 - 0.5 * big);
  const double e = (biased - 1023.0) + big;
  const double s = (m - 1.0) / (m + 1.0);
  const double z = s * s;
  double p = 1.0 / 19;
  p = p * z + 1.0 / 17;
  p = p * z + 1.0 / 15;
  p = p * z + 1.0 / 13;
  p = p * z + 1.0 / 11;
  p = p * z + 1.0 / 9;
  p = p * z + 1.0 / 7;
  p = p * z + 1.0 / 5;
  p = p * z + 1.0 / 3;
  p = p * z + 1.0;
  return e * 0.6931471805599453 + 2.0 * s * p;
}

// Reductions below keep kLanes partial sums, lane k taking elements k, k + kLanes, ..., combined in
// a fixed order at the end. That lets the compiler vectorise without reassociating (no
// -ffast-math), and gives the same bits on every machine whichever clone (SSE2/AVX2) runs.
constexpr int kLanes = 8;

inline double combine(const double* lanes) {
  double acc = 0.0;
  for (int k = 0; k < kLanes; ++k) acc += lanes[k];
  return acc;
}

// total * (log(total) - log(nonzero)); empty groups (total 0) give 0 * (log 1 - x) = 0.
inline double cross_term(double t, double log_nonzero) {
  const double safe = t > 0.0 ? t : 1.0;
  return t * (log_vectorisable(safe) - log_nonzero);
}

// Element-wise first (vectorises: no reduction), then a fixed-order lane sum.
PTQ_HOT_LOOP void cross_terms(const double* totals, const double* log_nonzero, int n,
                              double* out /* OUT */) {
  for (int g = 0; g < n; ++g) out[g] = cross_term(totals[g], log_nonzero[g]);
}

double group_cross_term(const double* totals, const double* log_nonzero, int n, double* scratch) {
  cross_terms(totals, log_nonzero, n, scratch);
  double lanes[kLanes] = {};
  int g = 0;
  for (; g + kLanes <= n; g += kLanes)
    for (int k = 0; k < kLanes; ++k) lanes[k] += scratch[g + k];
  for (int k = 0; g + k < n; ++k) lanes[k] += scratch[g + k];
  return combine(lanes);
}

// Squared error of fake-quantising a bin centre x (units of the search-bin width).
inline double centre_error(double count, double x, double inv_step, double step, double qmax) {
  // Adding and removing 1.5 * 2^52 rounds half-to-even (like torch.round) and vectorises.
  double q = (x * inv_step + 6755399441055744.0) - 6755399441055744.0;
  q = q > qmax ? qmax : q;
  const double d = x - q * step;
  return count * d * d;
}

// Error of threshold `threshold_bin` (in bin widths) over all bins; centre of bin j is j + 0.5.
PTQ_HOT_LOOP double quantisation_error(const double* bins, int nb, double threshold_bin,
                                       double qmax) {
  const double step = threshold_bin / qmax;
  const double inv_step = qmax / threshold_bin;
  double lanes[kLanes] = {};
  int j = 0;
  for (; j + kLanes <= nb; j += kLanes)
    for (int k = 0; k < kLanes; ++k)
      lanes[k] += centre_error(bins[j + k], j + k + 0.5, inv_step, step, qmax);
  for (int k = 0; j + k < nb; ++k)
    lanes[k] += centre_error(bins[j + k], j + k + 0.5, inv_step, step, qmax);
  return combine(lanes);
}

// Candidates start_bin, start_bin + stride, ... <= nb, counted without overflowing the index.
std::int64_t candidate_count(std::int64_t nb, std::int64_t start_bin, std::int64_t stride) {
  return (nb - start_bin) / stride + 1;
}

std::vector<double> entropy_curve_checked(const std::vector<double>& bins, int nq, int start_bin,
                                          std::int64_t stride) {
  const int nb = static_cast<int>(bins.size());
  const std::int64_t candidates = candidate_count(nb, start_bin, stride);
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> cum(nb + 1, 0.0);
  std::vector<double> blogb(nb + 1, 0.0);
  std::vector<int> nz(nb + 1, 0);
  for (int j = 0; j < nb; ++j) {
    const double b = bins[j];
    cum[j + 1] = cum[j] + b;
    blogb[j + 1] = blogb[j] + (b > 0.0 ? b * std::log(b) : 0.0);
    nz[j + 1] = nz[j] + (b > 0.0);
  }
  const double total = static_cast<double>(cum[nb]);
  if (!(total > 0.0)) return std::vector<double>(static_cast<std::size_t>(candidates), inf);
  std::vector<double> log_int(nb + 1, 0.0);
  for (int k = 1; k <= nb; ++k) log_int[k] = std::log(static_cast<double>(k));
  const double log_total = std::log(total);
  std::vector<double> curve;
  curve.reserve(static_cast<std::size_t>(candidates));
  std::vector<double> totals(nq), log_nonzero(nq);
  std::vector<int> nonzero_of(nq);
  std::vector<double> scratch(nq);
  for (std::int64_t k = 0; k < candidates; ++k) {
    const int i = static_cast<int>(start_bin + k * stride);  // <= nb: no overflow
    const double inside = static_cast<double>(cum[i]);
    const double outliers = std::max(0.0, static_cast<double>(cum[nb] - cum[i]));
    const double last_p = bins[i - 1] + outliers;
    const double plogp = blogb[i - 1] + (last_p > 0.0 ? last_p * std::log(last_p) : 0.0);
    // Group g covers bins [ceil(g*i/nq), ceil((g+1)*i/nq)); the bounds advance by i/nq each step,
    // tracked as quotient and remainder to keep divisions out of the inner loop.
    const int step_q = i / nq, step_r = i % nq;
    int bound = 0, rem = nq - 1;  // ceil(g*i/nq) == (g*i + nq - 1) / nq, held as bound*nq + rem
    int last_group = 0;
    for (int g = 0; g < nq; ++g) {
      const int lo = bound;
      bound += step_q;
      rem += step_r;
      if (rem >= nq) {
        rem -= nq;
        ++bound;
      }
      const int hi = bound;
      if (lo <= i - 1 && i - 1 < hi) last_group = g;
      const int nonzero = nz[hi] - nz[lo];
      totals[g] = nonzero == 0 ? 0.0 : static_cast<double>(cum[hi] - cum[lo]);
      nonzero_of[g] = nonzero;
    }
    // Q's group totals come from the unfolded bins; its zero pattern is P's, so the last bin is
    // non-zero when outliers fold into it. Q = 0 where P > 0 (an empty last group receiving
    // outliers) makes the divergence infinite.
    if (outliers > 0.0 && bins[i - 1] <= 0.0) {
      if (totals[last_group] <= 0.0) {
        curve.push_back(inf);
        continue;
      }
      ++nonzero_of[last_group];
    }
    for (int g = 0; g < nq; ++g) log_nonzero[g] = log_int[nonzero_of[g]];
    double plogq = group_cross_term(totals.data(), log_nonzero.data(), nq, scratch.data());
    // Every P_j in a group meets the same Q; the outliers in P[i-1] meet the last group's Q.
    if (outliers > 0.0) plogq += outliers * (std::log(totals[last_group]) - log_nonzero[last_group]);
    // p = P / T and q = Q / S with T the total count and S the count inside the candidate range.
    curve.push_back((plogp - plogq) / total - log_total + std::log(inside));
  }
  return curve;
}

double entropy_search(const std::vector<double>& bins, double bin_width, int nq, int start_bin,
                      std::int64_t stride) {
  const std::vector<double> curve = entropy_curve_checked(bins, nq, start_bin, stride);
  std::size_t best = curve.size();
  double best_kl = std::numeric_limits<double>::infinity();
  for (std::size_t k = 0; k < curve.size(); ++k) {
    if (curve[k] <= best_kl && std::isfinite(curve[k])) {  // <=: the LAST minimum wins
      best_kl = curve[k];
      best = k;
    }
  }
  if (best == curve.size()) return bin_width * static_cast<double>(bins.size());  // keep the range
  return bin_width * static_cast<double>(start_bin + static_cast<std::int64_t>(best) * stride);
}

double mse_search(const std::vector<double>& bins, double bin_width, int num_bits, int start_bin) {
  const int nb = static_cast<int>(bins.size());
  const double qmax = std::ldexp(1.0, num_bits - 1) - 1.0;
  int best = start_bin;
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = start_bin; i < nb; ++i) {
    const double err = quantisation_error(bins.data(), nb, i + 0.5, qmax);
    if (err < best_err) {  // <: the FIRST minimum wins
      best_err = err;
      best = i;
    }
  }
  return bin_width * (best + 0.5);
}

}  // namespace

std::vector<double> entropy_curve(const std::vector<double>& bins, std::int64_t nq,
                                  std::int64_t start_bin, std::int64_t stride) {
  check_bins(bins, 1.0);
  check_entropy_args(static_cast<std::int64_t>(bins.size()), nq, start_bin, stride);
  return entropy_curve_checked(bins, static_cast<int>(nq), static_cast<int>(start_bin), stride);
}

double amax_entropy(const std::vector<double>& bins, double bin_width, std::int64_t nq,
                    std::int64_t start_bin, std::int64_t stride) {
  check_bins(bins, bin_width);
  check_entropy_args(static_cast<std::int64_t>(bins.size()), nq, start_bin, stride);
  return entropy_search(bins, bin_width, static_cast<int>(nq), static_cast<int>(start_bin), stride);
}

double amax_mse(const std::vector<double>& bins, double bin_width, std::int64_t num_bits,
                std::int64_t start_bin) {
  check_bins(bins, bin_width);
  check_mse_args(static_cast<std::int64_t>(bins.size()), num_bits, start_bin);
  return mse_search(bins, bin_width, static_cast<int>(num_bits), static_cast<int>(start_bin));
}

}  // namespace ptq
