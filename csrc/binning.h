// Per-element logic of the histogram grid, shared by the CPU loops and (later) CUDA kernels:
// plain inline functions with no state, no allocation, no Python.
//
// The grid. Each tensor keeps a histogram of |x| split by sign: bins [0, G) for x >= 0 and
// [G, 2G) for x < 0, where bin b covers [b*w, (b+1)*w) with w = 2^k / G and G a power of two.
// All finite values satisfy |x| < 2^k. Because w is a power of two, |x| / w is computed exactly
// (a multiplication by a power of two), so the bin of every value is exact. When a larger value
// arrives, k grows to k' and bin j of the new grid is the sum of bins [j*2^d, (j+1)*2^d) of the
// old one (d = k' - k): floor(floor(v / w) / 2^d) == floor(v / (w * 2^d)) for non-negative v, so
// a histogram built on a small grid and grown equals one built on the final grid directly. That is
// what makes statistics independent of batch order and of how data is split, bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PTQ_HD __host__ __device__
#else
#define PTQ_HD
#endif

namespace ptq {

// Grid exponent meaning "no non-zero value seen yet": every finite value seen so far is 0.
constexpr int kEmptyExponent = -1000;

PTQ_HD inline bool is_finite(float x) {
  // NaN and +-Inf fail this; written without std::isfinite so it also compiles for the device.
  return (x - x) == 0.0f;
}

// Smallest exponent k with a < 2^k (a > 0, finite).
PTQ_HD inline int exponent_above(float a) {
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e with m in [0.5, 1): a < 2^e
  return e;
}

// Multiplier mapping |x| to its bin index on the grid of exponent k with 2^log2_bins bins.
PTQ_HD inline double grid_scale(int exponent, int log2_bins) {
  return std::ldexp(1.0, log2_bins - exponent);
}

// Bin index of a finite value on the signed grid: [0, G) non-negative, [G, 2G) negative.
// Values equal to -0.0 count as non-negative. scale comes from grid_scale(); the clamp only
// guards against a caller that forgot to grow the grid.
PTQ_HD inline std::uint32_t signed_bin(float x, double scale, std::uint32_t bins_per_side) {
  const double v = std::fabs(static_cast<double>(x)) * scale;
  std::uint32_t b = static_cast<std::uint32_t>(v);
  b = b < bins_per_side ? b : bins_per_side - 1;
  return b + (x < 0.0f ? bins_per_side : 0u);
}

// IEEE 754 binary16 bits -> float32, exact for every value (normals, subnormals, Inf, NaN).
PTQ_HD inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while ((man & 0x400u) == 0);
    bits = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace ptq
