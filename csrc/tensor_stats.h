// Streaming statistics of one tensor: counts, min/max, per-channel min/max and an exact,
// mergeable signed histogram on a power-of-two grid (see binning.h for why it is exact).
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "binning.h"
#include "dtypes.h"

namespace ptq {

// Raised for bad arguments; the bindings map it to ValueError.
struct StatsError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A read-only n-d view of float32 or float16 data, C-contiguous (the bindings make it so).
struct TensorView {
  const void* data = nullptr;
  bool is_half = false;
  std::vector<std::int64_t> shape;
  std::int64_t size() const;
};

class TensorStats {
 public:
  // num_bins: bins the scale search sees over [0, absmax] (TensorRT uses 2048).
  // grid_bins: bins per sign on the power-of-two grid; a power of two >= 2 * num_bins, so that at
  //            least num_bins grid bins always cover [0, absmax]. Finer grids track the exact
  //            [0, absmax] histogram more closely (see scale_search.h).
  // axis: channel axis for per-channel min/max, or kNoAxis. Negative axes count from the end.
  static constexpr int kNoAxis = -(1 << 30);
  TensorStats(int num_bins, int grid_bins, int axis);

  // Folds data in. threads > 1 splits large inputs; the result is identical for any thread count.
  void update(const TensorView& view, int threads);
  // Adds other's observations (same num_bins/grid_bins/axis and channel count required).
  void merge(const TensorStats& other);

  int num_bins() const { return num_bins_; }
  int grid_bins() const { return grid_bins_; }
  int axis() const { return axis_; }
  int exponent() const { return s_.exponent; }  // all finite |x| < 2^exponent
  double bin_width() const;                   // grid bin width 2^exponent / grid_bins (0 when empty)
  count_t count() const { return s_.count; }  // every element seen, NaN and Inf included
  count_t finite_count() const { return s_.count - s_.nan_count - s_.inf_count; }
  count_t nan_count() const { return s_.nan_count; }
  count_t inf_count() const { return s_.inf_count; }
  float min() const { return s_.min; }        // +inf when no finite value was seen
  float max() const { return s_.max; }        // -inf when no finite value was seen
  float absmax() const;
  const std::vector<float>& channel_min() const { return s_.channel_min; }
  const std::vector<float>& channel_max() const { return s_.channel_max; }
  // bins [0, G): x >= 0; bins [G, 2G): x < 0, bin index of |x|.
  const std::vector<count_t>& signed_counts() const { return s_.counts; }
  // |x| histogram on the grid: positive + negative side, bin by bin.
  std::vector<count_t> abs_counts() const;

  // Folds in observations counted elsewhere (the CUDA paths) on this object's grid definition:
  // signed_counts has 2 * grid_bins entries on the grid of `exponent`. Statistics with an axis
  // need the per-channel extremes too (`channels` of each; +inf/-inf for a channel without
  // finite values); without an axis, channels must be 0.
  void absorb_counts(int exponent, const count_t* signed_counts, count_t count, count_t nan_count,
                     count_t inf_count, float min, float max, const float* channel_min = nullptr,
                     const float* channel_max = nullptr, std::size_t channels = 0);

  std::vector<std::uint8_t> to_bytes() const;
  static TensorStats from_bytes(const std::uint8_t* data, std::size_t size);

 // Everything one update accumulates; a thread's share of an update is one of these too.
  struct State {
    int exponent = kEmptyExponent;
    count_t count = 0, nan_count = 0, inf_count = 0;
    float min, max;
    std::vector<float> channel_min, channel_max;
    std::vector<count_t> counts;  // 2 * grid_bins
  };

 private:
  State fresh_state(std::size_t channels) const;
  void grow(State& s, int new_exponent) const;
  void absorb(State& into, const State& from) const;
  void process(State& s, const float* data, std::int64_t n, std::int64_t channel) const;
  void process_view(State& s, const TensorView& view, std::int64_t first_segment,
                    std::int64_t end_segment, std::int64_t segment_len,
                    std::int64_t channels) const;
  void channel_minmax_strided(const TensorView& view, std::int64_t channels, std::int64_t inner);

  int num_bins_;
  int grid_bins_;
  int log2_grid_;
  int axis_;
  State s_;
};

}  // namespace ptq
