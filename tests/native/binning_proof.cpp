// Host proof that the bit-pattern functions the GPU kernels use (binning.h) decide exactly what
// the CPU's double-precision functions decide. Run by tests/test_gpu_stats.py; prints the first
// mismatch and exits 1, or prints "ok <checks>" and exits 0.
//
// Exhaustive where it is cheap: every half-precision pattern; every subnormal and both ends of
// every binade for exponent_above_bits. Per grid (exponent, log2_bins): every bit pattern of the
// lowest 2^24 (all subnormals and the smallest normal binade) and of the 2^24 patterns just below
// the grid's top, where shifts and scales change regime; a stride through the rest. The default
// run covers every exponent on the default grid (2^16 bins) and the extreme exponents on the
// others; `binning_proof full` covers every pattern and every listed grid (about a minute).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "binning.h"

namespace {

std::uint64_t checks = 0;

[[noreturn]] void fail(const char* what, std::uint32_t abits, int exponent, int log2_bins,
                       std::uint64_t got, std::uint64_t want) {
  std::printf("MISMATCH %s: abits=0x%08x exponent=%d log2_bins=%d got=%llu want=%llu\n", what,
              abits, exponent, log2_bins, static_cast<unsigned long long>(got),
              static_cast<unsigned long long>(want));
  std::exit(1);
}

void check_exponent_above(std::uint32_t abits) {
  const int want = ptq::exponent_above(ptq::bits_float(abits));
  const int got = ptq::exponent_above_bits(abits);
  if (got != want) fail("exponent_above_bits", abits, 0, 0, got, want);
  ++checks;
}

// Every positive finite float when full; otherwise every subnormal, both ends of every normal
// binade (the bit formula depends only on the exponent field there) and a stride.
void check_exponents_above(bool full) {
  const std::uint32_t step = full ? 1u : 997u;
  for (std::uint32_t abits = 1; abits < ptq::kInfBits; abits += abits < 0x00800000u ? 1u : step)
    check_exponent_above(abits);
  for (std::uint32_t f = 1; f < 255; ++f) {
    check_exponent_above(f << 23);
    check_exponent_above((f << 23) | 0x007fffffu);
  }
}

void check_threshold(int exponent) {
  const std::uint32_t t = ptq::threshold_bits(exponent);
  // abits < t exactly when |x| < 2^exponent: check both sides of the boundary.
  const double limit = exponent == ptq::kEmptyExponent ? 0.0 : std::ldexp(1.0, exponent);
  for (std::uint32_t abits : {t - 1, t, t + 1}) {
    if (abits > ptq::kInfBits) continue;
    const bool below = abits == ptq::kInfBits ? false
                       : exponent == ptq::kEmptyExponent
                           ? abits == 0
                           : static_cast<double>(ptq::bits_float(abits)) < limit;
    if ((abits < t) != below) fail("threshold_bits", abits, exponent, 0, abits < t, below);
    ++checks;
  }
}

void check_bin(std::uint32_t abits, int exponent, int log2_bins, double scale, float fscale,
               bool float_ok) {
  const std::uint32_t g = 1u << log2_bins;
  const float x = ptq::bits_float(abits);
  const std::uint32_t want = ptq::signed_bin(x, scale, g);  // the CPU's double path
  const std::uint32_t got = ptq::bin_of_abits(abits, exponent, log2_bins);
  if (got != want) fail("bin_of_abits", abits, exponent, log2_bins, got, want);
  if (float_ok) {
    const std::uint32_t f = ptq::scaled_bin(x, fscale);
    if (f != want) fail("scaled_bin", abits, exponent, log2_bins, f, want);
    // The device flushes subnormal inputs to zero (-ftz=true): the bin must not change.
    if (abits < 0x00800000u && want != 0) fail("scaled_bin ftz", abits, exponent, log2_bins, 0, want);
  }
  // Growth by d doublings is a right shift of the bin (what the grow kernel sums up).
  const int d = 1 + static_cast<int>(abits % 7u);
  if (exponent + d <= 129) {
    const std::uint32_t grown = ptq::bin_of_abits(abits, exponent + d, log2_bins);
    if (grown != (got >> d)) fail("grow shift", abits, exponent, log2_bins, grown, got >> d);
  }
  checks += 2;
}

void check_grid(int exponent, int log2_bins) {
  const std::uint32_t top = ptq::threshold_bits(exponent);
  const double scale = ptq::grid_scale(exponent, log2_bins);
  const bool float_ok = ptq::scaled_bin_is_exact(exponent, log2_bins);
  const float fscale = float_ok ? ptq::bin_scale(exponent, log2_bins) : 0.0f;
  if (float_ok && static_cast<double>(fscale) != scale) fail("bin_scale", 0, exponent, log2_bins, 0, 0);
  const std::uint32_t low_end = top < (1u << 24) ? top : (1u << 24);
  for (std::uint32_t a = 0; a < low_end; ++a) check_bin(a, exponent, log2_bins, scale, fscale, float_ok);
  const std::uint32_t high_begin = top > (1u << 24) ? top - (1u << 24) : 0u;
  for (std::uint32_t a = high_begin > low_end ? high_begin : low_end; a < top; ++a)
    check_bin(a, exponent, log2_bins, scale, fscale, float_ok);
  for (std::uint32_t a = low_end; a < high_begin; a += 4093u)
    check_bin(a, exponent, log2_bins, scale, fscale, float_ok);
}

void check_halves() {
  // half_to_float against the value the half format defines: (-1)^s * m * 2^e.
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = ptq::half_to_float(static_cast<std::uint16_t>(h));
    const std::uint32_t e = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    const double sign = (h & 0x8000u) ? -1.0 : 1.0;
    if (e == 0x1f) {
      const bool ok = man == 0 ? std::isinf(f) && (f < 0) == (sign < 0) : std::isnan(f);
      if (!ok) fail("half_to_float special", h, 0, 0, ptq::float_bits(f), 0);
    } else {
      const double want = e == 0 ? sign * std::ldexp(static_cast<double>(man), -24)
                                 : sign * std::ldexp(static_cast<double>(man | 0x400u), static_cast<int>(e) - 25);
      if (static_cast<double>(f) != want || std::signbit(f) != (sign < 0))
        fail("half_to_float", h, 0, 0, ptq::float_bits(f), 0);
    }
    ++checks;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // "full": every pattern where the default run strides (minutes instead of seconds).
  const bool quick = !(argc > 1 && argv[1][0] == 'f');
  check_exponents_above(!quick);
  check_halves();
  const int exponents[] = {ptq::kEmptyExponent, -148, -140, -127, -126, -125, -112, -111, -110, -100,
                           -60, -1, 0, 1, 3, 20, 100, 120, 126, 127, 128};
  for (int e : exponents) check_threshold(e);
  const int grids[] = {5, 11, 16, 20, 24};
  for (int log2_bins : grids) {
    for (int e : exponents) {
      if (e == ptq::kEmptyExponent) continue;
      if (quick && log2_bins != 16 && e != -148 && e != 128) continue;
      check_grid(e, log2_bins);
    }
  }
  std::printf("ok %llu\n", static_cast<unsigned long long>(checks));
  return 0;
}
