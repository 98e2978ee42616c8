// Per-element logic of the histogram grid, shared by the CPU loops and the CUDA kernels:
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
//
// This header is also compiled at run time by NVRTC (csrc/cuda/stats_kernels.cu through CuPy),
// which has no host standard headers: under __CUDACC_RTC__ the few names used here come from
// CUDA built-ins instead. Host code sees exactly the same functions as before.
#pragma once
#if !defined(__CUDACC_RTC__)
#include <cmath>
#include <cstdint>
#include <cstring>
#endif

#if defined(__CUDACC__)
#define PTQ_HD __host__ __device__
#else
#define PTQ_HD
#endif

namespace ptq {

#if defined(__CUDACC_RTC__)
using uint16_t = unsigned short;
using uint32_t = unsigned int;
#else
using std::uint16_t;
using std::uint32_t;
#endif

// Grid exponent meaning "no non-zero value seen yet": every finite value seen so far is 0.
constexpr int kEmptyExponent = -1000;
// Bits of +Inf: |x| bits below it are finite, above it NaN.
constexpr uint32_t kInfBits = 0x7f800000u;

PTQ_HD inline float bits_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

PTQ_HD inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

// Order keys. A float's bits as an int32 that orders like the float (finite values and +-Inf):
// a non-negative float keeps its bits, a negative one has the bits below the sign flipped, which
// is its own inverse. Integer min/max then give float min/max: vectorisable compares on the CPU
// (grid.cpp), integer atomics on the GPU (immune to flush-to-zero). -0.0 has key -1; callers that
// count it as +0.0 clear its bits first. The one definition for host and device code;
// pyengine/gpu/layout.py is its NumPy twin.
PTQ_HD inline uint32_t flip_negative(uint32_t bits) {
  return bits ^ (static_cast<uint32_t>(static_cast<int>(bits) >> 31) >> 1);
}
PTQ_HD inline int order_key(uint32_t bits) { return static_cast<int>(flip_negative(bits)); }
PTQ_HD inline uint32_t key_bits(int key) { return flip_negative(static_cast<uint32_t>(key)); }
PTQ_HD inline float key_float(int key) { return bits_float(key_bits(key)); }

PTQ_HD inline bool is_finite(float x) {
  // NaN and +-Inf fail this; written without std::isfinite so it also compiles for the device.
  return (x - x) == 0.0f;
}

// Smallest exponent k with a < 2^k (a > 0, finite).
PTQ_HD inline int exponent_above(float a) {
  int e = 0;
#if defined(__CUDACC_RTC__)
  frexpf(a, &e);
#else
  std::frexp(a, &e);  // a = m * 2^e with m in [0.5, 1): a < 2^e
#endif
  return e;
}

// Multiplier mapping |x| to its bin index on the grid of exponent k with 2^log2_bins bins.
PTQ_HD inline double grid_scale(int exponent, int log2_bins) {
#if defined(__CUDACC_RTC__)
  return ldexp(1.0, log2_bins - exponent);
#else
  return std::ldexp(1.0, log2_bins - exponent);
#endif
}

// Bin index of a finite value on the signed grid: [0, G) non-negative, [G, 2G) negative.
// Values equal to -0.0 count as non-negative. scale comes from grid_scale(); the clamp only
// guards against a caller that forgot to grow the grid.
PTQ_HD inline uint32_t signed_bin(float x, double scale, uint32_t bins_per_side) {
#if defined(__CUDACC_RTC__)
  const double v = fabs(static_cast<double>(x)) * scale;
#else
  const double v = std::fabs(static_cast<double>(x)) * scale;
#endif
  uint32_t b = static_cast<uint32_t>(v);
  b = b < bins_per_side ? b : bins_per_side - 1;
  return b + (x < 0.0f ? bins_per_side : 0u);
}

// --- The same grid decided on bit patterns (the GPU path) ------------------------------------
// Integer arithmetic on |x| bits (abits = bits & 0x7fffffff): exact for every finite value,
// normal or subnormal, and immune to flush-to-zero modes (CuPy compiles with -ftz=true).
// tests/native/binning_proof.cpp checks each against the functions above.

// exponent_above() of the value with these bits (0 < abits < kInfBits).
PTQ_HD inline int exponent_above_bits(uint32_t abits) {
  if (abits >= 0x00800000u) return static_cast<int>(abits >> 23) - 126;  // normal: 1.m * 2^(f-127)
  int e = -149;  // subnormal: frac * 2^-149 < 2^(-149 + bit length of frac)
  for (uint32_t frac = abits; frac != 0; frac >>= 1) ++e;
  return e;
}

// Bits t with: abits < t  <=>  |x| < 2^exponent, for every non-NaN x. The empty grid admits
// zeros only (t = 1); a grid above the float range admits every finite value.
PTQ_HD inline uint32_t threshold_bits(int exponent) {
  if (exponent < -149) return 1u;  // kEmptyExponent
  if (exponent >= 128) return kInfBits;
  if (exponent >= -126) return static_cast<uint32_t>(exponent + 127) << 23;
  return 1u << (exponent + 149);  // 2^exponent is subnormal
}

// floor(|x| * 2^(log2_bins - exponent)) for 0 <= abits < threshold_bits(exponent).
// |x| = m * 2^(f' - 150) with m the significand (hidden bit included) and f' = max(f, 1).
PTQ_HD inline uint32_t bin_of_abits(uint32_t abits, int exponent, int log2_bins) {
  const uint32_t f = abits >> 23;
  const uint32_t m = f != 0 ? (abits & 0x007fffffu) | 0x00800000u : abits;
  const int s = static_cast<int>(f != 0 ? f : 1u) - 150 + log2_bins - exponent;
  if (s >= 0) return s < 32 ? m << s : 0u;  // m << s < 2^log2_bins by the precondition
  return -s < 32 ? m >> -s : 0u;
}

// The float shortcut: |x| * 2^(log2_bins - exponent) in float is exact when that scale is at most
// 2^126 (so the scale is a normal float, and every subnormal |x| lands below 1, in bin 0,
// whether or not the hardware flushes it to zero) and at least 2^-126 (always true: the grid
// exponent is at most 128 and log2_bins at least 5).
PTQ_HD inline bool scaled_bin_is_exact(int exponent, int log2_bins) {
  return exponent != kEmptyExponent && log2_bins - exponent <= 126 && log2_bins - exponent >= -126;
}

PTQ_HD inline float bin_scale(int exponent, int log2_bins) {
  return bits_float(static_cast<uint32_t>(log2_bins - exponent + 127) << 23);
}

// Bin of |x| (a = |x|, finite, below 2^exponent) when scaled_bin_is_exact(); scale = bin_scale().
PTQ_HD inline uint32_t scaled_bin(float a, float scale) {
#if defined(__CUDA_ARCH__)
  return __float2uint_rz(__fmul_rn(a, scale));
#else
  return static_cast<uint32_t>(a * scale);
#endif
}

// IEEE 754 binary16 bits -> float32, exact for every value (normals, subnormals, Inf, NaN).
PTQ_HD inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
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
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  return bits_float(bits);
}

}  // namespace ptq
