// The core's own test, without Python: grid growth, merges in any order, serialisation and its
// corruption checks, counts absorbed from elsewhere, argument checks, and threads sharing one
// object. Built with
// -DPTQ_BUILD_TESTS=ON (optionally -DPTQ_SANITIZE=address,undefined) and run by ctest or by
// tests/test_native_selftest.py. Prints one line per failed expectation; exit code 1 if any.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <thread>
#include <vector>

#include "grid.h"
#include "scale_search.h"
#include "tensor_stats.h"

using ptq::count_t;
using ptq::TensorStats;
using ptq::TensorView;
using Bytes = std::vector<std::uint8_t>;

namespace {

int failures = 0;

#define EXPECT(cond)                                                                \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);      \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

// The expression must throw StatsError (and nothing else).
#define EXPECT_THROWS(expr)                                                         \
  do {                                                                              \
    bool threw = false;                                                             \
    try {                                                                           \
      expr;                                                                         \
    } catch (const ptq::StatsError&) {                                             \
      threw = true;                                                                 \
    }                                                                               \
    if (!threw) {                                                                   \
      std::fprintf(stderr, "%s:%d: expected StatsError from %s\n", __FILE__, __LINE__, #expr); \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Deterministic values over many magnitudes (xorshift; no library RNG whose stream may change).
std::vector<float> values(std::size_t n, std::uint32_t seed, float scale) {
  std::vector<float> x(n);
  std::uint32_t s = seed * 2654435761u + 1u;
  for (auto& v : x) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    const float u = static_cast<float>(s) / 4294967296.0f * 2.0f - 1.0f;
    v = u * u * u * scale;
  }
  return x;
}

TensorView view(const std::vector<float>& x, std::vector<std::int64_t> shape = {}) {
  TensorView v;
  v.data = x.data();
  v.shape = shape.empty() ? std::vector<std::int64_t>{static_cast<std::int64_t>(x.size())} : shape;
  return v;
}

TensorStats stats_of(const std::vector<float>& x, std::int64_t threads = 1) {
  TensorStats s(64, 128, TensorStats::kNoAxis);
  s.update(view(x), threads);
  return s;
}

void test_grow_grid_by_hand() {
  // 4 bins per sign on [0, 2^e): growing by one doubles each bin's width, pairs are summed.
  std::vector<count_t> c = {1, 2, 3, 4, 5, 6, 7, 8};
  ptq::grow_grid(2, 0, 1, c.data());
  EXPECT((c == std::vector<count_t>{3, 7, 0, 0, 11, 15, 0, 0}));
  ptq::grow_grid(2, 1, 9, c.data());  // beyond the grid: everything in bin 0
  EXPECT((c == std::vector<count_t>{10, 0, 0, 0, 26, 0, 0, 0}));
  std::vector<count_t> zeros = {5, 0, 0, 0, 0, 0, 0, 0};  // the empty grid holds zeros only
  ptq::grow_grid(2, ptq::kEmptyExponent, -3, zeros.data());
  EXPECT((zeros == std::vector<count_t>{5, 0, 0, 0, 0, 0, 0, 0}));
}

void test_growth_equals_one_pass() {
  // Small values first, then ever larger ones: the grid grows several times on the way.
  std::vector<float> all;
  TensorStats grown(64, 128, TensorStats::kNoAxis);
  for (int k = 0; k < 6; ++k) {
    std::vector<float> part = values(3000, 10 + k, std::ldexp(1.0f, 3 * k - 8));
    grown.update(view(part), 1);
    all.insert(all.end(), part.begin(), part.end());
  }
  const TensorStats one = stats_of(all);
  EXPECT(grown.to_bytes() == one.to_bytes());
  EXPECT(grown.exponent() == ptq::exponent_above(grown.absmax()));
  // ... and both equal a direct binning of everything on the final grid.
  std::vector<count_t> direct(256, 0);
  ptq::bin_values(all.data(), static_cast<std::int64_t>(all.size()), one.exponent(), 128,
                  direct.data(), 256);
  EXPECT(direct == one.signed_counts());
  EXPECT(one.count() == all.size() && one.finite_count() == all.size());
}

void test_merge_in_any_order() {
  std::vector<float> all = values(20000, 3, 50.0f);
  all[17] = kNaN;
  all[1234] = -kInf;
  all[5000] = 0.0f;
  const TensorStats one = stats_of(all);
  std::vector<TensorStats> parts;
  const std::size_t cuts[] = {0, 1, 700, 701, 9000, 15000, 20000};
  for (int k = 0; k + 1 < 7; ++k)
    parts.push_back(stats_of(std::vector<float>(all.begin() + cuts[k], all.begin() + cuts[k + 1])));
  std::vector<int> order = {0, 1, 2, 3, 4, 5};
  int permutations = 0;
  do {
    TensorStats merged(64, 128, TensorStats::kNoAxis);
    for (int k : order) merged.merge(parts[k]);
    EXPECT(merged.to_bytes() == one.to_bytes());
    ++permutations;
  } while (std::next_permutation(order.begin(), order.end()) && permutations < 120);
  // A tree of merges, and a merge with itself (counts double, the range stays).
  TensorStats left(parts[0]), right(parts[3]);
  left.merge(parts[1]), left.merge(parts[2]);
  right.merge(parts[4]), right.merge(parts[5]);
  right.merge(left);
  EXPECT(right.to_bytes() == one.to_bytes());
  right.merge(right);
  EXPECT(right.count() == 2 * one.count() && right.absmax() == one.absmax());
  // Thread count does not change a large update.
  const std::vector<float> big = values(1 << 23, 4, 3.0f);
  EXPECT(stats_of(big, 1).to_bytes() == stats_of(big, 3).to_bytes());
}

void test_serialisation() {
  std::vector<float> x = values(5000, 5, 9.0f);
  x[3] = kNaN;
  x[4] = kInf;
  TensorStats per_channel(64, 128, 1);
  per_channel.update(view(x, {10, 5, 100}), 1);
  const TensorStats empty(16, 32, TensorStats::kNoAxis);
  for (const TensorStats* s : std::vector<const TensorStats*>{&per_channel, &empty}) {
    const Bytes b = s->to_bytes();
    EXPECT(TensorStats::from_bytes(b.data(), b.size()).to_bytes() == b);
    for (std::size_t cut = 0; cut < b.size(); ++cut) EXPECT_THROWS(TensorStats::from_bytes(b.data(), cut));
    // Every single-byte change either throws or gives statistics that round-trip (never a crash;
    // under the sanitizers, never a bad read).
    for (std::size_t i = 0; i < b.size(); ++i) {
      for (int flip : {0x01, 0x80, 0xff}) {
        Bytes bad = b;
        bad[i] ^= static_cast<std::uint8_t>(flip);
        try {
          const TensorStats t = TensorStats::from_bytes(bad.data(), bad.size());
          const Bytes again = t.to_bytes();
          EXPECT(TensorStats::from_bytes(again.data(), again.size()).to_bytes() == again);
        } catch (const ptq::StatsError&) {
        }
      }
    }
  }
  // Invariants a writer maintains: NaN + Inf <= count (count sits after the 6 header words).
  Bytes b = stats_of(values(100, 6, 1.0f)).to_bytes();
  b[32] = 0xff;  // nan_count becomes larger than count
  EXPECT_THROWS(TensorStats::from_bytes(b.data(), b.size()));
}

void test_absorb_counts() {
  // Counts made elsewhere fold in like a merge; an inconsistent part is refused and changes nothing.
  const std::vector<float> a = values(3000, 11, 2.0f), b = values(2000, 12, 50.0f);
  TensorStats merged = stats_of(a), absorbed = stats_of(a);
  const TensorStats other = stats_of(b);
  merged.merge(other);
  const auto part = other.snapshot();
  absorbed.absorb_counts(part.exponent, part.counts.data(), part.count, part.nan_count,
                         part.inf_count, part.min, part.max);
  EXPECT(absorbed.to_bytes() == merged.to_bytes());
  const Bytes before = absorbed.to_bytes();
  EXPECT_THROWS(absorbed.absorb_counts(part.exponent, part.counts.data(), part.count + 1,
                                       part.nan_count, part.inf_count, part.min, part.max));
  EXPECT_THROWS(absorbed.absorb_counts(part.exponent - 1, part.counts.data(), part.count,
                                       part.nan_count, part.inf_count, part.min, part.max));
  EXPECT_THROWS(absorbed.absorb_counts(part.exponent, part.counts.data(), part.count,
                                       part.nan_count, part.inf_count, part.max + 1.0f, part.max));
  EXPECT(absorbed.to_bytes() == before);
}

void test_counter_limits() {
  // Self-merges double the count: the one that would pass 2^64 - 1 is refused and changes nothing.
  TensorStats s = stats_of(values(1024, 13, 4.0f));
  int merges = 0;
  bool refused = false;
  while (!refused && merges < 80) {
    const Bytes before = s.to_bytes();
    try {
      s.merge(s);
      ++merges;
    } catch (const ptq::StatsError&) {
      refused = true;
      EXPECT(s.to_bytes() == before);
    }
  }
  EXPECT(refused && merges == 53 && s.count() == (count_t{1} << 63));
  const Bytes b = s.to_bytes();
  EXPECT(TensorStats::from_bytes(b.data(), b.size()).to_bytes() == b);
  // A counted part may not bring a bin to 2^63 (the format's limit), nor end on a grid larger
  // than the values need (its bytes would not load).
  TensorStats t(16, 32, TensorStats::kNoAxis);
  std::vector<count_t> counts(64, 0);
  counts[16] = ptq::kMaxBinCount;  // 1.0 on the grid of exponent 1
  t.absorb_counts(1, counts.data(), ptq::kMaxBinCount, 0, 0, 1.0f, 1.0f);
  const Bytes full = t.to_bytes();
  counts[16] = 1;
  EXPECT_THROWS(t.absorb_counts(1, counts.data(), 1, 0, 0, 1.0f, 1.0f));
  EXPECT(t.to_bytes() == full);
  TensorStats fresh(16, 32, TensorStats::kNoAxis);
  counts.assign(64, 0);
  counts[1] = 1;  // 1.0 on the grid of exponent 5
  EXPECT_THROWS(fresh.absorb_counts(5, counts.data(), 1, 0, 0, 1.0f, 1.0f));
  EXPECT(fresh.count() == 0);
}

void test_memory_limit() {
  // The largest grid declared by an empty object: 256 MiB held, a few dozen bytes written.
  const TensorStats big(16, ptq::kMaxGridBins, TensorStats::kNoAxis);
  const Bytes b = big.to_bytes();
  const std::uint64_t need = 2 * static_cast<std::uint64_t>(ptq::kMaxGridBins) * sizeof(count_t);
  EXPECT(b.size() < 100 && big.memory_bytes() == need);
  EXPECT(TensorStats::memory_needed(b.data(), b.size()) == need);
  EXPECT_THROWS(TensorStats::from_bytes(b.data(), b.size(), need - 1));
  EXPECT(TensorStats::from_bytes(b.data(), b.size(), need).to_bytes() == b);
}

void test_argument_checks() {
  const auto no_axis = TensorStats::kNoAxis;
  EXPECT_THROWS(TensorStats(15, 64, no_axis));
  EXPECT_THROWS(TensorStats(std::int64_t{1} << 40, 64, no_axis));
  EXPECT_THROWS(TensorStats(64, 96, no_axis));       // not a power of two
  EXPECT_THROWS(TensorStats(64, 64, no_axis));       // < 2 * num_bins
  EXPECT_THROWS(TensorStats(64, 128, 64));           // axis beyond any ndim
  EXPECT_THROWS(TensorStats(64, 128, -65));
  TensorStats s = stats_of(values(4096, 7, 2.0f));
  const std::vector<float> x = values(10, 8, 1.0f);
  EXPECT_THROWS(s.update(view(x), -1));
  EXPECT_THROWS(s.update(view(x), ptq::kMaxThreads + 1));
  TensorView misaligned = view(x, {4});
  misaligned.data = reinterpret_cast<const char*>(x.data()) + 1;
  EXPECT_THROWS(s.update(misaligned, 1));
  EXPECT_THROWS(s.update(view(x, {0, 3}), 1));
  EXPECT_THROWS(s.update(view(x, {-1}), 1));
  const std::int64_t big = std::numeric_limits<std::int32_t>::max();
  EXPECT(ptq::amax_entropy(s, 16, 16, big, true) > 0.0);  // one candidate; used to overflow
  EXPECT(ptq::amax_entropy(s, 16, 16, std::int64_t{1} << 40, false) > 0.0);
  EXPECT_THROWS(ptq::amax_entropy(s, 16, 16, 0, true));
  EXPECT_THROWS(ptq::amax_entropy(s, 32, 16, 1, true));   // nq > start_bin
  EXPECT_THROWS(ptq::amax_entropy(s, 16, 65, 1, true));   // start_bin > num_bins
  EXPECT_THROWS(ptq::amax_entropy(TensorStats(64, 128, no_axis), 16, 65, 1, true));  // empty too
  EXPECT_THROWS(ptq::amax_mse(s, 1, 16));
  EXPECT_THROWS(ptq::amax_mse(s, 17, 16));
  EXPECT_THROWS(ptq::amax_mse(s, 8, 64));
  EXPECT_THROWS(ptq::amax_percentile(s, 0.0));
  EXPECT_THROWS(ptq::amax_percentile(s, 100.5));
  EXPECT_THROWS(ptq::amax_percentile(s, std::nan("")));
  EXPECT_THROWS(ptq::asymmetric_range(s, 99.0, 40, false));
  EXPECT_THROWS(ptq::search_histogram(s, 0));
  EXPECT_THROWS(ptq::search_histogram(s, ptq::kMaxNumBins + 1));
  const std::vector<double> bins(256, 1.0);
  EXPECT(ptq::entropy_curve(bins, 128, 128, big).size() == 1);
  EXPECT_THROWS(ptq::entropy_curve(std::vector<double>{}, 1, 1, 1));
  EXPECT_THROWS(ptq::amax_entropy(std::vector<double>{1.0, -1.0}, 1.0, 1, 1, 1));
  EXPECT_THROWS(ptq::amax_mse(bins, 0.0, 8, 0));
  EXPECT_THROWS(ptq::amax_mse(bins, 1.0, 8, 256));
  std::vector<count_t> counts(8, 0);
  EXPECT_THROWS(ptq::grow_counts(3, 2, counts.data(), 8));   // a grid only grows
  EXPECT_THROWS(ptq::grow_counts(0, 1, counts.data(), 6));   // 3 bins per sign
  const std::vector<float> one = {1.0f};
  EXPECT_THROWS(ptq::bin_values(one.data(), 1, 0, 4, counts.data(), 8));  // 1 is not below 2^0
  EXPECT_THROWS(ptq::bin_values(one.data(), 1, 1, 4, counts.data(), 6));  // counts of the wrong size
}

void test_threads_share_one_object() {
  const std::vector<float> a = values(300000, 9, 4.0f), b = values(200000, 10, 40.0f);
  TensorStats shared(64, 128, TensorStats::kNoAxis), sequential(64, 128, TensorStats::kNoAxis);
  for (int round = 0; round < 4; ++round) {
    std::thread t1([&] { shared.update(view(a), 1); });
    std::thread t2([&] { shared.update(view(b), 2); });
    t1.join();
    t2.join();
    sequential.update(view(a), 1);
    sequential.update(view(b), 1);
  }
  EXPECT(shared.to_bytes() == sequential.to_bytes());
  // update_many naming one object twice.
  TensorStats twice(64, 128, TensorStats::kNoAxis), once(64, 128, TensorStats::kNoAxis);
  ptq::update_many({&twice, &twice}, {view(a), view(b)}, 2);
  once.update(view(a), 1);
  once.update(view(b), 1);
  EXPECT(twice.to_bytes() == once.to_bytes());
  // Merges in opposite orders from two threads: no deadlock; each ends with both contributions.
  for (int round = 0; round < 200; ++round) {
    TensorStats p = stats_of(a), q = stats_of(b);
    std::thread t1([&] { p.merge(q); });
    std::thread t2([&] { q.merge(p); });
    t1.join();
    t2.join();
    EXPECT(p.count() >= a.size() + b.size() && q.count() >= a.size() + b.size());
  }
}

}  // namespace

int main() {
  test_grow_grid_by_hand();
  test_growth_equals_one_pass();
  test_merge_in_any_order();
  test_serialisation();
  test_absorb_counts();
  test_counter_limits();
  test_memory_limit();
  test_argument_checks();
  test_threads_share_one_object();
  if (failures) {
    std::fprintf(stderr, "ptqcore_selftest: %d failed expectation(s)\n", failures);
    return 1;
  }
  std::printf("ptqcore_selftest: all passed\n");
  return 0;
}
