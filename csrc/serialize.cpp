// Binary form of one TensorStats, little-endian, version 2:
//   "PTQS" u32 version | i32 num_bins, grid_bins, axis, exponent | u64 count, nan, inf |
//   f32 min, max | u32 C, f32 channel_min[C], f32 channel_max[C] |
//   per sign side (non-negative, negative): u32 first, u32 length, u32 nbytes, tokens[nbytes]
// Only the span between the first and last non-zero bin of each side is stored, as LEB128 varint
// tokens: (c << 1) for a non-zero count c, ((n - 1) << 1) | 1 for a run of n empty bins. Most
// counts are small and most of a fine grid is empty, so a tensor takes a few KB instead of up to
// 1 MiB (this is what shards send to the driver). Equal statistics give equal bytes.
//
// Statistics bytes are untrusted input (files, other processes): from_bytes checks every field
// and every invariant an update or merge maintains, and throws StatsError for anything else.
// No size read from the bytes is allocated before the bytes are known to hold that much, except
// the grid, which the bytes only declare (a 60-byte blob may declare 2 x 2^24 counts, 256 MiB):
// it is held to the caller's memory limit first (memory_needed() reads it from the header alone).
#include <algorithm>
#include <cstring>
#include <string>

#include "tensor_stats.h"

namespace ptq {
namespace {

constexpr std::uint32_t kFormatVersion = 2;

[[noreturn]] void corrupt(const std::string& why) {
  throw StatsError("statistics bytes are corrupt (" + why + ")");
}

struct Writer {
  std::vector<std::uint8_t> out;
  void u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void i32(std::int32_t v) { u32(static_cast<std::uint32_t>(v)); }
  void f32(float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    u32(bits);
  }
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<std::uint8_t>(v | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<std::uint8_t>(v));
  }
};

struct Reader {
  const std::uint8_t* p;
  std::size_t left;
  void need(std::size_t n) const {
    if (left < n) throw StatsError("statistics bytes are truncated or corrupt");
  }
  std::uint32_t u32() {
    need(4);
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
    p += 4;
    left -= 4;
    return v;
  }
  std::uint64_t u64() {
    need(8);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    p += 8;
    left -= 8;
    return v;
  }
  std::int32_t i32() { return static_cast<std::int32_t>(u32()); }
  float f32() {
    std::uint32_t bits = u32();
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1);
      const std::uint8_t byte = *p++;
      --left;
      // The tenth byte holds bit 63 only: anything more would not fit 64 bits.
      if (shift == 63 && byte > 1) corrupt("varint overflows 64 bits");
      v |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return v;
    }
    corrupt("varint too long");
  }
};

// Counts of bins [first, first + length) as varint tokens (see the header comment).
void encode_span(Writer& w, const count_t* c, std::uint32_t length) {
  std::uint32_t b = 0;
  while (b < length) {
    if (c[b] == 0) {
      std::uint32_t run = 0;
      while (b < length && c[b] == 0) ++run, ++b;
      w.varint((static_cast<std::uint64_t>(run - 1) << 1) | 1u);
    } else {
      if (c[b] >> 63) throw StatsError("a histogram count is too large to serialise");
      w.varint(c[b] << 1);
      ++b;
    }
  }
}

// Reads one side's span into c (grid_bins zeroed counts).
void decode_side(Reader& r, std::uint32_t grid_bins, count_t* c) {
  const std::uint32_t first = r.u32(), length = r.u32(), nbytes = r.u32();
  if (static_cast<std::uint64_t>(first) + length > grid_bins) corrupt("histogram span out of range");
  r.need(nbytes);
  Reader span{r.p, nbytes};
  r.p += nbytes;
  r.left -= nbytes;
  std::uint32_t b = 0;
  while (b < length) {
    const std::uint64_t token = span.varint();
    if (token & 1u) {
      const std::uint64_t run = (token >> 1) + 1;
      if (run > length - b) corrupt("empty run too long");
      b += static_cast<std::uint32_t>(run);  // counts start at zero
    } else {
      if (token == 0) corrupt("a zero count outside an empty run");
      c[first + b++] = token >> 1;
    }
  }
  if (span.left != 0) corrupt("histogram span length");
}

}  // namespace

std::vector<std::uint8_t> TensorStats::to_bytes() const {
  Writer w;
  for (char ch : {'P', 'T', 'Q', 'S'}) w.out.push_back(static_cast<std::uint8_t>(ch));
  w.u32(kFormatVersion);
  w.i32(num_bins_);
  w.i32(grid_bins_);
  w.i32(axis_);
  read([&](const State& s) {
    w.i32(s.exponent);
    w.u64(s.count);
    w.u64(s.nan_count);
    w.u64(s.inf_count);
    w.f32(s.min);
    w.f32(s.max);
    w.u32(static_cast<std::uint32_t>(s.channel_min.size()));
    for (float v : s.channel_min) w.f32(v);
    for (float v : s.channel_max) w.f32(v);
    for (int side = 0; side < 2; ++side) {
      const count_t* c = s.counts.data() + static_cast<std::size_t>(side) * grid_bins_;
      std::uint32_t first = 0, end = 0;
      for (std::uint32_t b = 0; b < static_cast<std::uint32_t>(grid_bins_); ++b) {
        if (c[b] == 0) continue;
        if (end == 0) first = b;
        end = b + 1;
      }
      Writer span;
      encode_span(span, c + first, end - first);
      w.u32(first);
      w.u32(end - first);
      w.u32(static_cast<std::uint32_t>(span.out.size()));
      w.out.insert(w.out.end(), span.out.begin(), span.out.end());
    }
    return 0;
  });
  return w.out;
}

namespace {

// The fields before the channel ranges, and what an object of them holds in memory.
struct Header {
  std::int32_t num_bins, grid_bins, axis, exponent;
  count_t count, nan_count, inf_count;
  float min, max;
  std::uint32_t channels;
};

Header read_header(Reader& r, const std::uint8_t* data) {
  r.need(4);
  if (std::memcmp(data, "PTQS", 4) != 0) throw StatsError("not ptqengine statistics (bad magic)");
  r.p += 4;
  r.left -= 4;
  const std::uint32_t version = r.u32();
  if (version != kFormatVersion)
    throw StatsError("unsupported statistics format version " + std::to_string(version));
  Header h;
  h.num_bins = r.i32();
  h.grid_bins = r.i32();
  h.axis = r.i32();
  h.exponent = r.i32();
  if (!valid_exponent(h.exponent)) corrupt("grid exponent out of range");
  h.count = r.u64();
  h.nan_count = r.u64();
  h.inf_count = r.u64();
  h.min = r.f32();
  h.max = r.f32();
  h.channels = r.u32();
  r.need(static_cast<std::size_t>(h.channels) * 8);  // the ranges are there: C is bounded by the bytes
  return h;
}

// A grid_bins the constructor will refuse (negative, not a power of two) counts as it reads.
std::uint64_t memory_of(const Header& h) {
  return 2 * static_cast<std::uint64_t>(std::max<std::int32_t>(h.grid_bins, 0)) * sizeof(count_t) +
         2 * static_cast<std::uint64_t>(h.channels) * sizeof(float);
}

}  // namespace

std::uint64_t TensorStats::memory_bytes() const {
  return 2 * static_cast<std::uint64_t>(grid_bins_) * sizeof(count_t) +
         read([](const State& s) { return 2 * s.channel_min.size() * sizeof(float); });
}

std::uint64_t TensorStats::memory_needed(const std::uint8_t* data, std::size_t size) {
  Reader r{data, size};
  return memory_of(read_header(r, data));
}

TensorStats TensorStats::from_bytes(const std::uint8_t* data, std::size_t size,
                                    std::uint64_t memory_limit) {
  Reader r{data, size};
  const Header h = read_header(r, data);
  // Everything before the histogram is read and checked before anything is allocated: the
  // channel ranges are in the bytes, the grid only declared, so it is held to memory_limit.
  const std::uint64_t memory = memory_of(h);
  if (memory > memory_limit)
    throw StatsError("statistics need " + std::to_string(memory >> 20) + " MiB of memory (a grid of " +
                     std::to_string(h.grid_bins) + " bins), more than the limit of " +
                     std::to_string(memory_limit >> 20) + " MiB");
  const std::int32_t num_bins = h.num_bins, grid_bins = h.grid_bins, axis = h.axis;
  std::vector<float> channel_min(h.channels), channel_max(h.channels);
  for (auto& v : channel_min) v = r.f32();
  for (auto& v : channel_max) v = r.f32();
  TensorStats t = [&] {
    try {
      return TensorStats(num_bins, grid_bins, axis);
    } catch (const StatsError& e) {
      corrupt(e.what());
    }
  }();
  State& s = t.s_;
  s.exponent = h.exponent;
  s.count = h.count;
  s.nan_count = h.nan_count;
  s.inf_count = h.inf_count;
  s.min = h.min;
  s.max = h.max;
  s.channel_min = std::move(channel_min);
  s.channel_max = std::move(channel_max);
  for (int side = 0; side < 2; ++side)
    decode_side(r, static_cast<std::uint32_t>(grid_bins),
                s.counts.data() + static_cast<std::size_t>(side) * grid_bins);
  if (r.left != 0) throw StatsError("statistics bytes have trailing data");
  try {
    t.check_state(t.s_, true);
  } catch (const StatsError& e) {
    corrupt(e.what());
  }
  return t;
}

}  // namespace ptq
