// CPU emulation of one update of the device statistics (csrc/cuda/stats_kernels.cu): the four
// launches, block by block and thread by thread, through the same decision code the kernels run
// (csrc/cuda/stats_logic.h, csrc/binning.h). Atomics become plain additions; every shared and
// global index is bounds-checked. Driven by tests/test_gpu_stats.py:
//
//   device_emulator layout
//       prints sizeof/offsetof of TensorState and WorkEntry (compared with pyengine/gpu/layout.py)
//   device_emulator update DIR BLOCKS AXIS_BLOCKS THREADS CAPACITY VALUES_PER_BIN
//       DIR holds states.bin, counts.bin, channels.bin (updated in place), work.bin, axis_work.bin
//       and data.bin. Addresses in the work tables are byte offsets into data.bin / channels.bin.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "binning.h"
#include "stats_logic.h"

namespace {

using ptq::gpu::u64;
using namespace ptq::gpu;

constexpr std::uint32_t kUnroll = 4;  // PTQ_UNROLL's default in stats_kernels.cu

// How many values took each route of count_value() (written to routes.txt: tests check that
// their data exercise every route).
struct Routes {
  u64 zero = 0, window = 0, hot_pos = 0, hot_neg = 0, global = 0, nonfinite = 0;
} routes;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "emulator: %s\n", what.c_str());
  std::exit(1);
}

template <class T>
std::vector<T> read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) die("cannot open " + path);
  std::fseek(f, 0, SEEK_END);
  const long n = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<T> v(static_cast<std::size_t>(n) / sizeof(T));
  if (n > 0 && std::fread(v.data(), 1, static_cast<std::size_t>(n), f) != static_cast<std::size_t>(n)) die("short read " + path);
  std::fclose(f);
  return v;
}

template <class T>
void write_file(const std::string& path, const std::vector<T>& v) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) die("cannot write " + path);
  std::fclose(f);
}

struct Memory {
  std::vector<TensorState> states;
  std::vector<u64> counts;
  std::vector<int> channels;
  std::vector<unsigned char> data;
};

std::uint32_t load_bits(const Memory& m, u64 address, bool half) {
  if (address + (half ? 2 : 4) > m.data.size()) die("data read out of bounds");
  if (half) {
    const std::uint16_t h = static_cast<std::uint16_t>(m.data[address] | (m.data[address + 1] << 8));
    return ptq::float_bits(ptq::half_to_float(h));
  }
  std::uint32_t bits = 0;
  for (int k = 0; k < 4; ++k) bits |= static_cast<std::uint32_t>(m.data[address + k]) << (8 * k);
  return bits;
}

// The device's ThreadSink with plain counters (one per block: order does not matter to sums).
struct HostSink {
  std::vector<std::uint32_t>* slots;
  std::uint32_t used;  // slots the kernel zeroed for this block
  u64* counts;         // the tensor's 2 * bins counts
  u64 bins2;
  u64 zeros = 0, hot_p = 0, hot_n = 0, nans = 0, infs = 0;
  int min_key = kKeyPlusInf, max_key = kKeyMinusInf;
  void zero() { ++zeros; ++routes.zero; }
  void window(std::uint32_t slot) {
    ++routes.window;
    if (slot >= used) die("window slot " + std::to_string(slot) + " beyond the zeroed " + std::to_string(used));
    ++(*slots)[slot];
  }
  void hot_pos() { ++hot_p; ++routes.hot_pos; }
  void hot_neg() { ++hot_n; ++routes.hot_neg; }
  void global(u64 index) {
    ++routes.global;
    if (index >= bins2) die("global count index out of range");
    ++counts[index];
  }
  void nonfinite(bool is_nan) {
    ++(is_nan ? nans : infs);
    ++routes.nonfinite;
  }
  void extremes(int key) {
    min_key = key < min_key ? key : min_key;
    max_key = key > max_key ? key : max_key;
  }
};

template <bool kMain, bool kScale>
void count_item(const Memory& m, const WorkEntry& e, u64 a, u64 b, const ItemPlan& p, HostSink& sink,
                std::uint32_t threads, std::uint32_t unroll) {
  const bool half = (e.flags & kFlagHalf) != 0;
  const std::uint32_t size = half ? 2u : 4u, per_vector = 16u / size;
  const ItemSplit split = split_item(e.data, a, b, size);
  if ((e.data + (a + split.head) * size) % 16 != 0 && split.vectors) die("vector loads not 16-byte aligned");
  u64 visited = 0;
  for (std::uint32_t tid = 0; tid < threads; ++tid) {  // the kernel's loops, thread by thread
    for (u64 i = tid; i < split.head; i += threads, ++visited)
      count_value<kMain, kScale>(load_bits(m, e.data + (a + i) * size, half), p, sink);
    u64 v = tid;
    for (; v + (unroll - 1) * u64{threads} < split.vectors; v += unroll * u64{threads})
      for (std::uint32_t k = 0; k < unroll; ++k)
        for (std::uint32_t j = 0; j < per_vector; ++j, ++visited)
          count_value<kMain, kScale>(load_bits(m, e.data + (a + split.head + (v + k * threads) * per_vector + j) * size, half), p, sink);
    for (; v < split.vectors; v += threads)
      for (std::uint32_t j = 0; j < per_vector; ++j, ++visited)
        count_value<kMain, kScale>(load_bits(m, e.data + (a + split.head + v * per_vector + j) * size, half), p, sink);
    const u64 tail = a + split.head + split.vectors * per_vector;
    for (u64 j = tid; j < split.tail; j += threads, ++visited)
      count_value<kMain, kScale>(load_bits(m, e.data + (tail + j) * size, half), p, sink);
  }
  if (visited != b - a) die("item loops visited " + std::to_string(visited) + " of " + std::to_string(b - a));
}

void flush_item(Memory& m, HostSink& s, const ItemPlan& p, TensorState& state, u64 item_values, bool main_pass) {
  for (std::uint32_t slot = 0; slot < p.window_total; ++slot) {
    const std::uint32_t c = (*s.slots)[slot];
    if (c) {
      (*s.slots)[slot] = 0;
      const u64 index = slot_counts_index(slot, p);
      if (index >= s.bins2) die("window flush index out of range");
      s.counts[index] += c;
    }
  }
  for (std::uint32_t c : *s.slots)
    if (c) die("count left in a window slot beyond window_total");
  s.counts[0] += s.zeros;
  if (s.hot_p) s.counts[signed_counts_index(p.hot_pos, p)] += s.hot_p;
  if (s.hot_n) s.counts[signed_counts_index(p.hot_neg, p)] += s.hot_n;
  if (main_pass) {
    state.count += item_values;
    state.nan_count += s.nans;
    state.inf_count += s.infs;
    if (s.min_key < state.min_key) state.min_key = s.min_key;
    if (s.max_key > state.max_key) state.max_key = s.max_key;
  }
  (void)m;
}

void count_launch(Memory& m, const std::vector<WorkEntry>& work, u64 blocks, std::uint32_t threads,
                  std::uint32_t capacity, std::uint32_t values_per_bin, bool main_pass) {
  u64 total = 0;
  for (const auto& e : work) total += e.size;
  std::vector<std::uint32_t> window(capacity);
  for (u64 blk = 0; blk < blocks; ++blk) {
    const u64 first = block_first(blk, blocks, total), last = block_first(blk + 1, blocks, total);
    if (first >= last) continue;
    const std::uint32_t used = window_for(last - first, capacity, values_per_bin);
    std::uint32_t w = find_entry(work.data(), static_cast<std::uint32_t>(work.size()), first);
    for (u64 pos = first; pos < last; ++w) {
      if (w >= work.size()) die("ran past the work table");
      const WorkEntry& e = work[w];
      const u64 end = last < e.start + e.size ? last : e.start + e.size;
      if (pos < e.start || pos >= end) die("find_entry/position mismatch");
      const u64 a = pos - e.start, b = end - e.start;
      TensorState& st = m.states.at(e.tensor);
      const ItemPlan p = plan_item(st, main_pass, b - a, capacity, values_per_bin);
      if (!p.skip) {
        if (p.window_total > used) die("window larger than the zeroed part");
        if (st.counts_offset + 2ull * p.bins > m.counts.size()) die("counts offset out of range");
        HostSink sink{&window, used, m.counts.data() + st.counts_offset, 2ull * p.bins};
        if (main_pass) {
          if (p.use_scale) count_item<true, true>(m, e, a, b, p, sink, threads, kUnroll);
          else count_item<true, false>(m, e, a, b, p, sink, threads, kUnroll);
        } else {
          if (p.use_scale) count_item<false, true>(m, e, a, b, p, sink, threads, kUnroll);
          else count_item<false, false>(m, e, a, b, p, sink, threads, kUnroll);
        }
        flush_item(m, sink, p, st, b - a, main_pass);
      }
      pos = end;
    }
  }
}

void channel_launch(Memory& m, const std::vector<WorkEntry>& work, u64 blocks, std::uint32_t threads) {
  u64 total = 0;
  for (const auto& e : work) total += e.size;
  for (u64 blk = 0; blk < blocks; ++blk) {
    const u64 first = block_first(blk, blocks, total), last = block_first(blk + 1, blocks, total);
    if (first >= last) continue;
    std::uint32_t w = find_entry(work.data(), static_cast<std::uint32_t>(work.size()), first);
    for (u64 pos = first; pos < last; ++w) {
      const WorkEntry& e = work.at(w);
      const u64 end = last < e.start + e.size ? last : e.start + e.size;
      const u64 a = pos - e.start, b = end - e.start;
      const std::uint32_t channels = e.channels;
      if (e.channel_keys % 4 || e.channel_keys / 4 + 2ull * channels > m.channels.size()) die("channel keys out of range");
      int* keys = m.channels.data() + e.channel_keys / 4;
      const bool half = (e.flags & kFlagHalf) != 0;
      for (std::uint32_t tid = 0; tid < threads; ++tid) {
        ChannelCursor cur = channel_cursor(a + tid, threads, e.inner, channels);
        for (u64 i = a + tid; i < b; i += threads) {
          if (cur.channel != (i / e.inner) % channels) die("channel cursor drifted");
          const std::uint32_t bits = load_bits(m, e.data + i * (half ? 2 : 4), half);
          if ((bits & 0x7fffffffu) < ptq::kInfBits) {
            const int key = order_key(bits);
            if (key < keys[cur.channel]) keys[cur.channel] = key;
            if (key > keys[channels + cur.channel]) keys[channels + cur.channel] = key;
          }
          advance(cur, e.inner, channels);
        }
      }
      pos = end;
    }
  }
}

// grow_counts() of the kernel: the same rounds, each read fully before it is written.
void grow_counts(u64* c, std::uint32_t bins, std::uint32_t shift, std::uint32_t threads) {
  const std::uint32_t group = 1u << shift, new_bins = bins >> shift;
  const std::uint32_t lanes = group < 32u ? group : 32u, per_round = threads / lanes;
  for (std::uint32_t side = 0; side < 2; ++side) {
    u64* cs = c + static_cast<u64>(side) * bins;
    std::vector<u64> sums(per_round);
    for (std::uint32_t r0 = 0; r0 < new_bins; r0 += per_round) {
      for (std::uint32_t sub = 0; sub < per_round; ++sub) {
        sums[sub] = 0;
        const std::uint32_t j = r0 + sub;
        if (j < new_bins)
          for (std::uint32_t lane = 0; lane < lanes; ++lane)
            for (std::uint32_t k = lane; k < group; k += lanes) sums[sub] += cs[static_cast<u64>(j) * group + k];
      }
      for (std::uint32_t sub = 0; sub < per_round && r0 + sub < new_bins; ++sub) cs[r0 + sub] = sums[sub];
    }
    for (std::uint32_t k = new_bins; k < bins; ++k) cs[k] = 0;
  }
}

void grow_launch(Memory& m, const std::vector<WorkEntry>& work, std::uint32_t threads) {
  for (const auto& e : work) {
    TensorState& s = m.states.at(e.tensor);
    const GrowPlan g = plan_growth(s.exponent, s.min_key, s.max_key, s.log2_bins);
    if (g.grows) grow_counts(m.counts.data() + s.counts_offset, 1u << s.log2_bins, g.shift, threads);
    s.recount_lo = g.grows ? ptq::threshold_bits(s.exponent) : kNoRecount;
    s.exponent = g.new_exponent;
    s.route_min_key = s.min_key;
    s.route_max_key = s.max_key;
  }
}

void print_layout() {
#define F(T, f) std::printf("%s.%s %zu\n", #T, #f, offsetof(T, f))
  std::printf("TensorState %zu\nWorkEntry %zu\n", sizeof(TensorState), sizeof(WorkEntry));
  F(TensorState, count); F(TensorState, nan_count); F(TensorState, inf_count);
  F(TensorState, counts_offset); F(TensorState, min_key); F(TensorState, max_key);
  F(TensorState, route_min_key); F(TensorState, route_max_key); F(TensorState, exponent);
  F(TensorState, recount_lo); F(TensorState, log2_bins);
  F(WorkEntry, data); F(WorkEntry, size); F(WorkEntry, start); F(WorkEntry, inner);
  F(WorkEntry, channel_keys); F(WorkEntry, tensor); F(WorkEntry, flags); F(WorkEntry, channels);
#undef F
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "layout") {
    print_layout();
    return 0;
  }
  if (argc != 8 || std::string(argv[1]) != "update") die("usage: layout | update DIR BLOCKS AXIS_BLOCKS THREADS CAPACITY VALUES_PER_BIN");
  const std::string dir = argv[2];
  const u64 blocks = std::strtoull(argv[3], nullptr, 10), axis_blocks = std::strtoull(argv[4], nullptr, 10);
  const auto threads = static_cast<std::uint32_t>(std::strtoul(argv[5], nullptr, 10));
  const auto capacity = static_cast<std::uint32_t>(std::strtoul(argv[6], nullptr, 10));
  const auto values_per_bin = static_cast<std::uint32_t>(std::strtoul(argv[7], nullptr, 10));
  if (threads == 0 || threads % 32) die("threads must be a multiple of 32");
  Memory m;
  m.states = read_file<TensorState>(dir + "/states.bin");
  m.counts = read_file<u64>(dir + "/counts.bin");
  m.channels = read_file<int>(dir + "/channels.bin");
  m.data = read_file<unsigned char>(dir + "/data.bin");
  const auto work = read_file<WorkEntry>(dir + "/work.bin");
  const auto axis_work = read_file<WorkEntry>(dir + "/axis_work.bin");
  count_launch(m, work, blocks, threads, capacity, values_per_bin, true);
  if (!axis_work.empty()) channel_launch(m, axis_work, axis_blocks, threads);
  grow_launch(m, work, threads);
  count_launch(m, work, blocks, threads, capacity, values_per_bin, false);
  write_file(dir + "/states.bin", m.states);
  write_file(dir + "/counts.bin", m.counts);
  write_file(dir + "/channels.bin", m.channels);
  std::FILE* f = std::fopen((dir + "/routes.txt").c_str(), "w");
  if (!f) die("cannot write routes.txt");
  std::fprintf(f, "zero %llu\nwindow %llu\nhot_pos %llu\nhot_neg %llu\nglobal %llu\nnonfinite %llu\n",
               routes.zero, routes.window, routes.hot_pos, routes.hot_neg, routes.global, routes.nonfinite);
  std::fclose(f);
  return 0;
}
