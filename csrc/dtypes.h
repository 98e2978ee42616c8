// Types shared by every kernel, named once (Python's twin is pyengine/_dtypes.py).
#pragma once
#include <cstdint>

namespace ptq {

// Histogram counts. 64-bit: one bin of a ReLU output (the zero bin) passes 2^32 after a few
// thousand images of a large feature map.
using count_t = std::uint64_t;

// float16 storage as raw bits; converted to float32 block by block.
using half_bits_t = std::uint16_t;

}  // namespace ptq
