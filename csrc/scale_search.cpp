// Scale searches on a TensorStats: the grid is re-binned to the search histogram (or, for
// percentiles, read directly) under the object's lock, then the histogram searches in
// histogram_search.cpp run without it. Conventions are documented in scale_search.h.
#include "scale_search.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ptq {
namespace {

// stats' search histogram (num_bins bins) into out, under stats' lock; returns absmax (0 when
// there is nothing to search).
double search_histogram_into(const TensorStats& stats, std::int64_t num_bins, double* out) {
  return stats.read([&](const TensorStats::State& s) {
    const double absmax = s.absmax();
    rebin_to_search(s.counts.data(), stats.grid_bins(), stats.bin_width_of(s.exponent), absmax,
                    num_bins, out);
    return absmax;
  });
}

}  // namespace

void rebin_to_search(const count_t* sc, std::int64_t grid_bins, double w, double absmax,
                     std::int64_t num_bins, double* out /* OUT */) {
  std::fill(out, out + num_bins, 0.0);
  const std::size_t g = static_cast<std::size_t>(grid_bins);
  if (absmax == 0.0) {
    out[0] = static_cast<double>(sc[0] + sc[g]);
    return;
  }
  check(std::isfinite(absmax) && absmax > 0.0 && w > 0.0 && absmax / w <= static_cast<double>(g),
        "absmax must lie on the grid");
  const double W = absmax / num_bins;
  const double inv_W = num_bins / absmax;
  const std::int64_t last = num_bins - 1;
  // Grid bins above the one holding absmax are empty.
  const std::size_t used = std::min(g, static_cast<std::size_t>(absmax / w) + 1);
  for (std::size_t f = 0; f < used; ++f) {
    const count_t n = sc[f] + sc[g + f];
    if (n == 0) continue;
    const double c = static_cast<double>(n);
    const double lo = f * w;
    const double hi = std::min((f + 1) * w, absmax);
    if (!(hi > lo)) {  // absmax sits exactly on this bin's lower edge: all its values equal absmax
      out[last] += c;
      continue;
    }
    std::int64_t j = std::min(static_cast<std::int64_t>(lo * inv_W), last);
    double a = lo;
    while (a < hi) {
      const double edge = j >= last ? hi : std::min((j + 1) * W, hi);
      if (edge > a) {  // lo * inv_W may round one bin low: then this bin takes nothing
        out[j] += c * (edge - a) / (hi - lo);
        a = edge;
      }
      ++j;
    }
  }
}

void rebin_counts(const count_t* signed_counts, std::int64_t counts_size, std::int64_t exponent,
                  double absmax, std::int64_t num_bins, double* out /* OUT */) {
  check(counts_size % 2 == 0, "a signed grid has an even number of counts");
  const int log2_grid = log2_of_grid(counts_size / 2);
  check(exponent >= kMinExponent && exponent <= kMaxExponent, "grid exponent is out of range");
  check(std::isfinite(absmax) && absmax >= 0.0 && absmax < std::ldexp(1.0, static_cast<int>(exponent)),
        "absmax must be finite, >= 0 and below 2^exponent");
  check_int(num_bins, 1, kMaxNumBins, "num_bins");
  check_aligned(signed_counts, "counts");
  check_aligned(out, "out");
  rebin_to_search(signed_counts, counts_size / 2, std::ldexp(1.0, static_cast<int>(exponent) - log2_grid),
                  absmax, num_bins, out);
}

std::vector<double> search_histogram(const TensorStats& stats, std::int64_t num_bins) {
  check_int(num_bins, 1, kMaxNumBins, "num_bins");
  std::vector<double> out(static_cast<std::size_t>(num_bins));
  search_histogram_into(stats, num_bins, out.data());
  return out;
}

double amax_percentile(const TensorStats& stats, double percentile) {
  check_percentile(percentile);
  return stats.read([&](const TensorStats::State& s) {
    const double absmax = s.absmax();
    if (s.finite_count() == 0 || absmax == 0.0) return 0.0;
    if (percentile == 100.0) return absmax;
    const double target = percentile / 100.0 * static_cast<double>(s.finite_count());
    const double w = stats.bin_width_of(s.exponent);
    const std::size_t g = static_cast<std::size_t>(stats.grid_bins());
    count_t cum = 0;
    for (std::size_t f = 0; f < g; ++f) {
      cum += s.counts[f] + s.counts[g + f];
      if (static_cast<double>(cum) >= target) return std::min((f + 1) * w, absmax);
    }
    return absmax;
  });
}

double amax_entropy(const TensorStats& stats, std::int64_t nq, std::int64_t start_bin,
                    std::int64_t stride, bool zero_bin_from_neighbour) {
  const int nb = stats.num_bins();
  check_entropy_args(nb, nq, start_bin, stride);  // before the early return below
  std::vector<double> bins(static_cast<std::size_t>(nb));
  const double absmax = search_histogram_into(stats, nb, bins.data());
  if (absmax == 0.0) return 0.0;
  if (zero_bin_from_neighbour) bins[0] = bins[1];  // nb >= kMinNumBins
  return amax_entropy(bins, absmax / nb, nq, start_bin, stride);
}

double amax_mse(const TensorStats& stats, std::int64_t num_bits, std::int64_t start_bin) {
  const int nb = stats.num_bins();
  check_mse_args(nb, num_bits, start_bin);
  std::vector<double> bins(static_cast<std::size_t>(nb));
  const double absmax = search_histogram_into(stats, nb, bins.data());
  if (absmax == 0.0) return 0.0;
  return amax_mse(bins, absmax / nb, num_bits, start_bin);
}

AsymmetricRange asymmetric_range(const TensorStats& stats, double percentile,
                                 std::int64_t num_bits_requested, bool is_signed) {
  check_percentile(percentile);
  const int num_bits = check_num_bits(num_bits_requested);
  AsymmetricRange r{};
  r.qmin = is_signed ? -(1LL << (num_bits - 1)) : 0;
  r.qmax = is_signed ? (1LL << (num_bits - 1)) - 1 : (1LL << num_bits) - 1;
  double lo = 0.0, hi = 0.0;
  stats.read([&](const TensorStats::State& s) {
    if (s.finite_count() == 0) return 0;
    lo = s.min;
    hi = s.max;
    if (percentile == 100.0) return 0;
    const count_t* c = s.counts.data();
    const std::size_t g = static_cast<std::size_t>(stats.grid_bins());
    count_t pos_total = 0, neg_total = 0;
    for (std::size_t b = 0; b < g; ++b) {
      pos_total += c[b];
      neg_total += c[g + b];
    }
    const double target = percentile / 100.0 * static_cast<double>(s.finite_count());
    const double w = stats.bin_width_of(s.exponent);
    // hi: smallest edge e >= 0 with count(x < e) >= target; values below 0 all count.
    count_t cum = neg_total;
    for (std::size_t b = 0; b < g && hi > 0.0; ++b) {
      cum += c[b];
      if (static_cast<double>(cum) >= target) {
        hi = std::min((b + 1) * w, hi);
        break;
      }
    }
    // lo: mirror image on the negative side.
    cum = pos_total;
    for (std::size_t b = 0; b < g && lo < 0.0; ++b) {
      cum += c[g + b];
      if (static_cast<double>(cum) >= target) {
        lo = std::max(-((b + 1) * w), lo);
        break;
      }
    }
    return 0;
  });
  lo = std::min(lo, 0.0);
  hi = std::max(hi, 0.0);
  r.lo = lo;
  r.hi = hi;
  r.scale = (hi - lo) / static_cast<double>(r.qmax - r.qmin);
  if (!(r.scale > 0.0)) r.scale = 1.0;  // all zeros: any scale represents them
  double zp = std::nearbyint(static_cast<double>(r.qmin) - lo / r.scale);
  zp = std::min(std::max(zp, static_cast<double>(r.qmin)), static_cast<double>(r.qmax));
  r.zero_point = static_cast<long long>(zp);
  return r;
}

}  // namespace ptq
