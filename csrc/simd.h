// Runtime dispatch for hot loops without -march=native: GCC and Clang compile a function twice
// (baseline x86-64 and AVX2) and pick one when the library loads. Elsewhere it is a no-op.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__CUDACC__)
#define PTQ_HOT_LOOP __attribute__((target_clones("avx2", "default")))
#else
#define PTQ_HOT_LOOP
#endif
