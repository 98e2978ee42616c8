// Argument checks at the core's edge. Every integer, size and range that comes from outside the
// core (Python, a statistics file) is checked here, in C++, before it reaches a loop or an
// allocation: a Python wrapper can be bypassed, the core cannot. A failed check throws
// StatsError, which the bindings map to ValueError.
#pragma once
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ptq {

// Raised for bad arguments and corrupt statistics bytes; the bindings map it to ValueError.
struct StatsError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Limits of what the core accepts. Large enough for any real use, small enough that no argument
// can ask for an absurd allocation or thread count.
constexpr std::int64_t kMinNumBins = 16;          // bins of a TensorStats' search histogram
constexpr std::int64_t kMaxNumBins = 1 << 20;     // ... and of any histogram a search runs on
constexpr std::int64_t kMaxGridBins = 1 << 24;    // grid bins per sign (2 x 128 MiB of counts)
constexpr std::int64_t kMaxAxis = 64;             // |axis| < NumPy's largest ndim
constexpr std::int64_t kMaxThreads = 4096;        // 0 means "every core"
constexpr std::int64_t kMinNumBits = 2, kMaxNumBits = 16;
// A histogram bin holds fewer than 2^63 values: the statistics format stores a count c as the
// varint token c << 1, so a larger one could be held but never written.
constexpr std::uint64_t kMaxBinCount = (std::uint64_t{1} << 63) - 1;

inline void check(bool ok, const std::string& message) {
  if (!ok) throw StatsError(message);
}

// a + b for counters; StatsError naming `what` instead of wrapping round.
inline std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, const char* what) {
  std::uint64_t sum;
  if (__builtin_add_overflow(a, b, &sum))
    throw StatsError(std::string(what) + " would pass 2^64 - 1 and wrap round");
  return sum;
}

// Arrays handed in from outside must be aligned to their element type (vectorised loops).
template <typename T>
void check_aligned(const T* p, const char* name) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
    throw StatsError(std::string(name) + " must be aligned to its element size");
}

// value in [lo, hi], returned as an int (every limit above fits one).
inline int check_int(std::int64_t value, std::int64_t lo, std::int64_t hi, const char* name) {
  if (value < lo || value > hi)
    throw StatsError(std::string(name) + " must be between " + std::to_string(lo) + " and " +
                     std::to_string(hi) + ", got " + std::to_string(value));
  return static_cast<int>(value);
}

// A percentile in (0, 100]; NaN fails.
inline double check_percentile(double percentile) {
  if (!(percentile > 0.0 && percentile <= 100.0))
    throw StatsError("percentile must be in (0, 100], got " + std::to_string(percentile));
  return percentile;
}

inline int check_num_bits(std::int64_t num_bits) {
  return check_int(num_bits, kMinNumBits, kMaxNumBits, "num_bits");
}

// Thread counts: 0 = every core the OS reports, otherwise 1..kMaxThreads.
inline int check_threads(std::int64_t threads) {
  return check_int(threads, 0, kMaxThreads, "threads");
}

// Search arguments against a histogram of nb bins.
inline void check_entropy_args(std::int64_t nb, std::int64_t nq, std::int64_t start_bin,
                               std::int64_t stride) {
  if (!(nq >= 1 && nq <= start_bin && start_bin <= nb))
    throw StatsError("entropy needs 1 <= num_quantized_bins <= start_bin <= num_bins, got " +
                     std::to_string(nq) + ", " + std::to_string(start_bin) + ", " +
                     std::to_string(nb));
  check(stride >= 1, "stride must be >= 1, got " + std::to_string(stride));
}

// The mse search costs (candidates x bins) error terms: about a second at this many. A statistics
// file chooses num_bins (up to 2^20, 2^40 terms: an hour), so the work is held to a stated limit.
constexpr std::int64_t kMaxMseWork = std::int64_t{1} << 28;

inline void check_mse_args(std::int64_t nb, std::int64_t num_bits, std::int64_t start_bin) {
  check_num_bits(num_bits);
  check_int(start_bin, 0, nb - 1, "start_bin");
  if ((nb - start_bin) * nb > kMaxMseWork)
    throw StatsError("mse over " + std::to_string(nb) + " bins from start_bin " +
                     std::to_string(start_bin) + " takes " + std::to_string(nb - start_bin) + " x " +
                     std::to_string(nb) + " steps, more than the limit of 2^28 (num_bins <= 16384 "
                     "searches in full)");
}

}  // namespace ptq
