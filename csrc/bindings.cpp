// The one Python binding file: converts types, releases the GIL around kernels, maps StatsError to
// ValueError. No logic lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <optional>

#include "parallel.h"
#include "scale_search.h"
#include "tensor_stats.h"
#ifdef PTQ_HAVE_CUDA
#include "cuda/stats_cuda.h"
#endif

namespace py = pybind11;
using ptq::TensorStats;

namespace {

ptq::TensorView view_of(const py::array& a) {
  ptq::TensorView v;
  const py::dtype dt = a.dtype();
  if (dt.is(py::dtype::of<float>())) {
    v.is_half = false;
  } else if (dt.kind() == 'f' && dt.itemsize() == 2) {
    v.is_half = true;
  } else {
    throw py::value_error("expected a float32 or float16 array, got dtype " +
                          std::string(py::str(dt)));
  }
  if (!(a.flags() & py::array::c_style))
    throw py::value_error("array must be C-contiguous (the Python layer copies other layouts)");
  if (a.size() == 0) throw py::value_error("cannot update statistics with an empty array");
  v.data = a.data();
  for (py::ssize_t d = 0; d < a.ndim(); ++d) v.shape.push_back(a.shape(d));
  return v;
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void update_many(const std::vector<TensorStats*>& stats, const std::vector<py::array>& arrays,
                 int threads) {
  if (stats.size() != arrays.size())
    throw py::value_error("update_many needs as many arrays as statistics");
  std::vector<ptq::TensorView> views;
  views.reserve(arrays.size());
  for (const auto& a : arrays) views.push_back(view_of(a));
  // Largest tensors first so that threads finish together.
  std::vector<std::size_t> order(views.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return views[a].size() > views[b].size(); });
  if (threads <= 0) threads = ptq::default_threads();
  py::gil_scoped_release release;
  const int n = static_cast<int>(std::min<std::size_t>(threads, std::max<std::size_t>(1, views.size())));
  if (!views.empty() && views[order[0]].size() * 2 > [&] {
        std::int64_t total = 0;
        for (auto& v : views) total += v.size();
        return total;
      }()) {
    // One tensor dominates: give it every thread, then share out the rest.
    stats[order[0]]->update(views[order[0]], threads);
    order.erase(order.begin());
  }
  std::atomic<std::size_t> next{0};
  ptq::parallel_run(n, [&](int) {
    for (std::size_t k = next++; k < order.size(); k = next++) stats[order[k]]->update(views[order[k]], 1);
  });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ptqengine native core: streaming tensor statistics and scale search";
  m.attr("__version__") = PTQ_VERSION;
#ifdef PTQ_HAVE_CUDA
  m.attr("cuda_built") = true;
  m.def("cuda_available", &ptq::cuda::device_available);
#else
  m.attr("cuda_built") = false;
  m.def("cuda_available", [] { return false; });
#endif
  m.attr("NO_AXIS") = TensorStats::kNoAxis;
  py::register_exception<ptq::StatsError>(m, "StatsError", PyExc_ValueError);

  py::class_<TensorStats>(m, "TensorStats")
      .def(py::init<int, int, int>(), py::arg("num_bins"), py::arg("grid_bins"), py::arg("axis"))
      .def("update",
           [](TensorStats& s, const py::array& a, int threads) {
             const ptq::TensorView v = view_of(a);
             py::gil_scoped_release release;
             s.update(v, threads);
           },
           py::arg("array"), py::arg("threads"))
      .def("update_device",
           [](TensorStats& s, std::uintptr_t ptr, std::int64_t n, bool is_half) {
#ifdef PTQ_HAVE_CUDA
             py::gil_scoped_release release;
             ptq::cuda::update_from_device(s, reinterpret_cast<const void*>(ptr), n, is_half);
#else
             (void)s, (void)ptr, (void)n, (void)is_half;
             throw py::value_error("ptqengine was built without CUDA: copy the array to the host first");
#endif
           },
           py::arg("pointer"), py::arg("size"), py::arg("is_half"))
      .def("absorb_counts",
           [](TensorStats& s, int exponent,
              const py::array_t<ptq::count_t, py::array::c_style | py::array::forcecast>& counts,
              ptq::count_t count, ptq::count_t nan_count, ptq::count_t inf_count, float min,
              float max, std::optional<py::array_t<float, py::array::c_style | py::array::forcecast>> channel_min,
              std::optional<py::array_t<float, py::array::c_style | py::array::forcecast>> channel_max) {
             if (counts.ndim() != 1 || counts.size() != 2 * static_cast<py::ssize_t>(s.grid_bins()))
               throw py::value_error("absorb_counts needs 2 * grid_bins counts");
             if (channel_min.has_value() != channel_max.has_value() ||
                 (channel_min && channel_min->size() != channel_max->size()))
               throw py::value_error("absorb_counts needs channel_min and channel_max of one size");
             const std::size_t channels = channel_min ? static_cast<std::size_t>(channel_min->size()) : 0;
             s.absorb_counts(exponent, counts.data(), count, nan_count, inf_count, min, max,
                             channel_min ? channel_min->data() : nullptr,
                             channel_max ? channel_max->data() : nullptr, channels);
           },
           py::arg("exponent"), py::arg("counts"), py::arg("count"), py::arg("nan_count"),
           py::arg("inf_count"), py::arg("min"), py::arg("max"), py::arg("channel_min") = py::none(),
           py::arg("channel_max") = py::none())
      .def("merge", &TensorStats::merge, py::arg("other"))
      .def_property_readonly("num_bins", &TensorStats::num_bins)
      .def_property_readonly("grid_bins", &TensorStats::grid_bins)
      .def_property_readonly("axis", &TensorStats::axis)
      .def_property_readonly("exponent", &TensorStats::exponent)
      .def_property_readonly("bin_width", &TensorStats::bin_width)
      .def_property_readonly("count", &TensorStats::count)
      .def_property_readonly("finite_count", &TensorStats::finite_count)
      .def_property_readonly("nan_count", &TensorStats::nan_count)
      .def_property_readonly("inf_count", &TensorStats::inf_count)
      .def_property_readonly("min", &TensorStats::min)
      .def_property_readonly("max", &TensorStats::max)
      .def_property_readonly("absmax", &TensorStats::absmax)
      .def("channel_min", [](const TensorStats& s) { return to_numpy(s.channel_min()); })
      .def("channel_max", [](const TensorStats& s) { return to_numpy(s.channel_max()); })
      .def("abs_counts", [](const TensorStats& s) { return to_numpy(s.abs_counts()); })
      .def("signed_counts", [](const TensorStats& s) { return to_numpy(s.signed_counts()); })
      .def("to_bytes",
           [](const TensorStats& s) {
             const auto b = s.to_bytes();
             return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
           })
      .def_static("from_bytes",
                  [](const py::bytes& b) {
                    const std::string_view sv = b;
                    return TensorStats::from_bytes(reinterpret_cast<const std::uint8_t*>(sv.data()),
                                                   sv.size());
                  })
      .def("search_histogram",
           [](const TensorStats& s, int num_bins) { return to_numpy(ptq::search_histogram(s, num_bins)); },
           py::arg("num_bins"))
      .def("amax_percentile", &ptq::amax_percentile, py::arg("percentile"))
      .def("amax_entropy",
           py::overload_cast<const TensorStats&, int, int, int, bool>(&ptq::amax_entropy),
           py::arg("num_quantized_bins"), py::arg("start_bin"), py::arg("stride"),
           py::arg("zero_bin_from_neighbour"),
           py::call_guard<py::gil_scoped_release>())
      .def("amax_mse", py::overload_cast<const TensorStats&, int, int>(&ptq::amax_mse),
           py::arg("num_bits"), py::arg("start_bin"), py::call_guard<py::gil_scoped_release>())
      .def("asymmetric_range",
           [](const TensorStats& s, double percentile, int num_bits, bool is_signed) {
             const auto r = ptq::asymmetric_range(s, percentile, num_bits, is_signed);
             return py::make_tuple(r.lo, r.hi, r.scale, r.zero_point, r.qmin, r.qmax);
           },
           py::arg("percentile"), py::arg("num_bits"), py::arg("is_signed"));

  m.def("entropy_curve",
        [](const py::array_t<double, py::array::c_style | py::array::forcecast>& bins, int nq,
           int start_bin, int stride) {
          std::vector<double> v(bins.data(), bins.data() + bins.size());
          return to_numpy(ptq::entropy_curve(v, nq, start_bin, stride));
        },
        py::arg("bins"), py::arg("num_quantized_bins"), py::arg("start_bin"), py::arg("stride"));
  m.def("amax_entropy_bins",
        [](const std::vector<double>& bins, double width, int nq, int start_bin, int stride) {
          return ptq::amax_entropy(bins, width, nq, start_bin, stride);
        },
        py::arg("bins"), py::arg("bin_width"), py::arg("num_quantized_bins"), py::arg("start_bin"),
        py::arg("stride"));
  m.def("amax_mse_bins",
        [](const std::vector<double>& bins, double width, int num_bits, int start_bin) {
          return ptq::amax_mse(bins, width, num_bits, start_bin);
        },
        py::arg("bins"), py::arg("bin_width"), py::arg("num_bits"), py::arg("start_bin"));
  m.def("update_many", &update_many, py::arg("stats"), py::arg("arrays"), py::arg("threads"));
  m.def("default_threads", &ptq::default_threads);
}
