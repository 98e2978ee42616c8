// Minimal fork-join helper: run fn(t) for t in [0, n) on n threads (t = 0 on the caller).
// Exceptions from workers are rethrown on the caller after all threads joined.
#pragma once
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace ptq {

template <typename Fn>
void parallel_run(int n, Fn&& fn) {
  if (n <= 1) {
    fn(0);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&](int t) {
    try {
      fn(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(n - 1);
  for (int t = 1; t < n; ++t) workers.emplace_back(guarded, t);
  guarded(0);
  for (auto& w : workers) w.join();
  if (error) std::rethrow_exception(error);
}

// Thread count to use when the caller passes 0 or less: every core the OS reports.
inline int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

}  // namespace ptq
