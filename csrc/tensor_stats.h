// Streaming statistics of one tensor: counts, min/max, per-channel min/max and an exact,
// mergeable signed histogram on a power-of-two grid (see binning.h for why it is exact).
//
// Thread safety: every object has its own mutex. Writers (update, merge, absorb_counts) hold it
// for the whole operation, readers for the fields they read together, so two threads may update,
// merge and read one object at once. No operation ever holds two objects' locks: merge copies
// the other object's state under its lock, releases it, then takes its own. So merge(a, a) and
// merges of a and b in opposite orders from two threads cannot deadlock.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "checks.h"
#include "dtypes.h"
#include "grid.h"

namespace ptq {

// A read-only n-d view of float32 or float16 data, C-contiguous (the bindings make it so).
struct TensorView {
  const void* data = nullptr;
  bool is_half = false;
  std::vector<std::int64_t> shape;
  std::int64_t size() const;
  // Throws StatsError unless the view is non-empty, element-aligned and has sane dimensions.
  void check() const;
};

class TensorStats {
 public:
  // Everything one update accumulates; a thread's share of an update is one of these too.
  struct State {
    int exponent = kEmptyExponent;  // all finite |x| < 2^exponent
    count_t count = 0, nan_count = 0, inf_count = 0;
    float min, max;                 // +inf / -inf until a finite value is seen
    std::vector<float> channel_min, channel_max;
    std::vector<count_t> counts;    // 2 * grid_bins, the signed grid (grid.h)
    count_t finite_count() const { return count - nan_count - inf_count; }
    float absmax() const;           // 0 when no finite value was seen
  };

  // num_bins: bins the scale search sees over [0, absmax] (TensorRT uses 2048).
  // grid_bins: bins per sign on the power-of-two grid; a power of two >= 2 * num_bins, so that at
  //            least num_bins grid bins always cover [0, absmax]. Finer grids track the exact
  //            [0, absmax] histogram more closely (see scale_search.h).
  // axis: channel axis for per-channel min/max, or kNoAxis. Negative axes count from the end.
  static constexpr int kNoAxis = -(1 << 30);
  TensorStats(std::int64_t num_bins, std::int64_t grid_bins, std::int64_t axis);
  TensorStats(const TensorStats& other);
  TensorStats(TensorStats&& other) noexcept;
  TensorStats& operator=(const TensorStats&) = delete;
  TensorStats& operator=(TensorStats&&) = delete;

  // Folds data in. threads > 1 splits large inputs (0: every core); the result is identical for
  // any thread count.
  void update(const TensorView& view, std::int64_t threads);
  // Adds other's observations (same num_bins/grid_bins/axis and channel count required).
  // other may be this object.
  void merge(const TensorStats& other);

  // Fixed at construction: read without the lock.
  int num_bins() const { return num_bins_; }
  int grid_bins() const { return grid_bins_; }
  int log2_grid() const { return log2_grid_; }
  int axis() const { return axis_; }
  double bin_width_of(int exponent) const;  // grid bin width on the grid of `exponent`

  // One field each, under the lock.
  int exponent() const;
  double bin_width() const;      // 2^exponent / grid_bins (0 when empty)
  count_t count() const;         // every element seen, NaN and Inf included
  count_t finite_count() const;
  count_t nan_count() const;
  count_t inf_count() const;
  float min() const;             // +inf when no finite value was seen
  float max() const;             // -inf when no finite value was seen
  float absmax() const;
  // Copies, under the lock.
  std::vector<float> channel_min() const;
  std::vector<float> channel_max() const;
  // bins [0, G): x >= 0; bins [G, 2G): x < 0, bin index of |x|.
  std::vector<count_t> signed_counts() const;
  // |x| histogram on the grid: positive + negative side, bin by bin.
  std::vector<count_t> abs_counts() const;
  State snapshot() const;
  // Runs fn(const State&) under the lock: for readers that need several fields of one moment
  // without copying the histogram (scale searches, serialisation).
  template <typename Fn>
  auto read(Fn&& fn) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return fn(static_cast<const State&>(s_));
  }

  // Observations counted elsewhere (the CUDA paths) on this object's grid definition.
  struct Counts {
    std::int64_t exponent;                // the grid the counts are on
    const count_t* signed_counts;         // 2 * grid_bins counts
    std::size_t signed_counts_size;
    count_t count, nan_count, inf_count;  // every value, NaN, Inf
    float min, max;                       // +inf / -inf when nothing finite was counted
    // Per-channel extremes, statistics with an axis only (+inf/-inf for a channel without
    // finite values).
    const float* channel_min = nullptr;
    std::size_t channel_min_size = 0;
    const float* channel_max = nullptr;
    std::size_t channel_max_size = 0;
  };
  // Folds them in after checking them like statistics bytes (sizes, counts summing to the
  // finite count, ranges, a grid that holds every value): a bad part changes nothing.
  void absorb_counts(const Counts& part);
  // The same with channels of each extreme (the CUDA code's form).
  void absorb_counts(int exponent, const count_t* signed_counts, count_t count, count_t nan_count,
                     count_t inf_count, float min, float max, const float* channel_min = nullptr,
                     const float* channel_max = nullptr, std::size_t channels = 0);

  // Serialisation (serialize.cpp). from_bytes checks every field and invariant and throws
  // StatsError for anything a valid object cannot produce, or when the object would hold more
  // than memory_limit bytes (checked before allocating: the grid is declared, not stored).
  std::vector<std::uint8_t> to_bytes() const;
  static TensorStats from_bytes(const std::uint8_t* data, std::size_t size,
                                std::uint64_t memory_limit = UINT64_MAX);
  // Bytes of histogram and channel ranges the object holds, and what from_bytes would allocate
  // for these bytes (from their header only; StatsError when the header is bad).
  std::uint64_t memory_bytes() const;
  static std::uint64_t memory_needed(const std::uint8_t* data, std::size_t size);

 private:
  State fresh_state(std::size_t channels) const;
  // Adds from to into (from is regridded in place); refuses, changing nothing, when a counter
  // would wrap or a bin reach kMaxBinCount.
  void absorb(State& into, State& from) const;
  void match_channels(State& s, std::size_t channels) const;
  void process(State& s, const float* data, std::int64_t n, std::int64_t channel) const;
  void process_view(State& s, const TensorView& view, std::int64_t first_segment,
                    std::int64_t end_segment, std::int64_t segment_len,
                    std::int64_t channels) const;
  void channel_minmax_strided(const TensorView& view, std::int64_t channels, std::int64_t inner);
  // What every update, merge and absorb maintains (state_checks.cpp); minimal_grid: the grid is
  // the smallest that holds absmax, as in a whole object (a counted part may use a larger one).
  void check_state(const State& s, bool minimal_grid) const;

  int num_bins_;
  int grid_bins_;
  int log2_grid_;
  int axis_;
  mutable std::mutex mutex_;
  State s_;
};

// Updates stats[k] with views[k] for every k, sharing `threads` threads (0: every core) among
// the tensors: largest first so that threads finish together; a tensor holding more than half
// of all values gets every thread to itself first. stats may name one object several times.
void update_many(const std::vector<TensorStats*>& stats, const std::vector<TensorView>& views,
                 std::int64_t threads);

}  // namespace ptq
