// The scheduler behind update_many: many tensors of one batch shared among threads.
#include <algorithm>
#include <atomic>
#include <numeric>

#include "parallel.h"
#include "tensor_stats.h"

namespace ptq {

void update_many(const std::vector<TensorStats*>& stats, const std::vector<TensorView>& views,
                 std::int64_t threads_requested) {
  check(stats.size() == views.size(), "update_many needs as many arrays as statistics");
  int threads = check_threads(threads_requested);
  if (threads == 0) threads = default_threads();
  std::int64_t total = 0;
  for (std::size_t k = 0; k < views.size(); ++k) {
    check(stats[k] != nullptr, "update_many got a null statistics object");
    views[k].check();
    total += views[k].size();
  }
  // Largest tensors first so that threads finish together.
  std::vector<std::size_t> order(views.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return views[a].size() > views[b].size(); });
  if (!order.empty() && views[order[0]].size() * 2 > total) {
    // One tensor dominates: give it every thread, then share out the rest.
    stats[order[0]]->update(views[order[0]], threads);
    order.erase(order.begin());
  }
  // The same object named twice is safe: its own lock serialises the two updates.
  const int workers = static_cast<int>(std::min<std::size_t>(threads, std::max<std::size_t>(1, order.size())));
  std::atomic<std::size_t> next{0};
  parallel_run(workers, [&](int) {
    for (std::size_t k = next++; k < order.size(); k = next++) stats[order[k]]->update(views[order[k]], 1);
  });
}

}  // namespace ptq
