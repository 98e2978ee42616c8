// The one Python binding file: converts types, releases the GIL around kernels, maps StatsError to
// ValueError. No logic lives here: every argument check and the update_many scheduler are in the
// core, which takes Python's integers as int64 and checks their ranges itself.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <string_view>

#include "grid.h"
#include "parallel.h"
#include "scale_search.h"
#include "tensor_stats.h"
#ifdef PTQ_HAVE_CUDA
#include "cuda/stats_cuda.h"
#endif

namespace py = pybind11;
using ptq::count_t;
using ptq::TensorStats;
using i64 = std::int64_t;

namespace {

// Dtypes compare by value: an unpickled float32 array carries its own (equal) dtype object.
ptq::TensorView view_of(const py::array& a) {
  ptq::TensorView v;
  const py::dtype dt = a.dtype();
  if (dt.equal(py::dtype::of<float>())) {
    v.is_half = false;
  } else if (dt.equal(py::dtype::from_args(py::str("float16")))) {
    v.is_half = true;
  } else {
    throw py::value_error("expected a float32 or float16 array in native byte order, got dtype " +
                          std::string(py::str(dt)));
  }
  if (!(a.flags() & py::array::c_style))
    throw py::value_error("array must be C-contiguous (the Python layer copies other layouts)");
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

// Runs fn with the GIL released; its result is converted after the GIL is back.
template <typename Fn>
auto without_gil(Fn&& fn) {
  py::gil_scoped_release release;
  return fn();
}

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using CountsIn = py::array_t<count_t, py::array::c_style | py::array::forcecast>;
using FloatsIn = py::array_t<float, py::array::c_style | py::array::forcecast>;
// Kernel outputs: never converted (a converted copy would swallow the output).
using CountsOut = py::array_t<count_t, py::array::c_style>;
using DoubleOut = py::array_t<double, py::array::c_style>;

std::vector<double> to_vector(const DoubleArray& a) { return {a.data(), a.data() + a.size()}; }

void bind_kernels(py::module_& m) {
  py::module_ k = m.def_submodule(
      "kernels", "The grid kernels alone, to test against their NumPy twins (tests/naive_kernels.py)");
  k.def("bin_values",
        [](const py::array_t<float, py::array::c_style>& x, i64 exponent, i64 grid_bins,
           CountsOut& counts) {
          ptq::bin_values(x.data(), x.size(), exponent, grid_bins, counts.mutable_data(),
                          counts.size());
        },
        py::arg("x").noconvert(), py::arg("exponent"), py::arg("grid_bins"),
        py::arg("counts").noconvert());
  k.def("grow",
        [](CountsOut& counts, i64 old_exponent, i64 new_exponent) {
          ptq::grow_counts(old_exponent, new_exponent, counts.mutable_data(), counts.size());
        },
        py::arg("counts").noconvert(), py::arg("old_exponent"), py::arg("new_exponent"));
  k.def("rebin",
        [](const CountsOut& counts, i64 exponent, double absmax, DoubleOut& out) {
          ptq::rebin_counts(counts.data(), counts.size(), exponent, absmax, out.size(),
                            out.mutable_data());
        },
        py::arg("signed_counts").noconvert(), py::arg("exponent"), py::arg("absmax"),
        py::arg("out").noconvert());
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
  const auto release = py::call_guard<py::gil_scoped_release>();

  py::class_<TensorStats>(m, "TensorStats")
      .def(py::init<i64, i64, i64>(), py::arg("num_bins"), py::arg("grid_bins"), py::arg("axis"))
      .def("update",
           [](TensorStats& s, const py::array& a, i64 threads) {
             const ptq::TensorView v = view_of(a);
             without_gil([&] { s.update(v, threads); });
           },
           py::arg("array"), py::arg("threads"))
      .def("update_device",
           [](TensorStats& s, std::uintptr_t ptr, i64 n, bool is_half) {
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
           [](TensorStats& s, i64 exponent, const CountsIn& counts, count_t count, count_t nan_count,
              count_t inf_count, float min, float max, const std::optional<FloatsIn>& channel_min,
              const std::optional<FloatsIn>& channel_max) {
             const auto size = [](const std::optional<FloatsIn>& a) {
               return a ? static_cast<std::size_t>(a->size()) : std::size_t{0};
             };
             const TensorStats::Counts part{
                 exponent, counts.data(), static_cast<std::size_t>(counts.size()), count, nan_count,
                 inf_count, min, max, channel_min ? channel_min->data() : nullptr, size(channel_min),
                 channel_max ? channel_max->data() : nullptr, size(channel_max)};
             without_gil([&] { s.absorb_counts(part); });
           },
           py::arg("exponent"), py::arg("counts"), py::arg("count"), py::arg("nan_count"),
           py::arg("inf_count"), py::arg("min"), py::arg("max"), py::arg("channel_min") = py::none(),
           py::arg("channel_max") = py::none())
      .def("merge", &TensorStats::merge, py::arg("other"), release)
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
             const auto b = without_gil([&] { return s.to_bytes(); });
             return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
           })
      .def_static("from_bytes",
                  [](const py::bytes& b, std::uint64_t memory_limit) {
                    const std::string_view sv = b;  // b stays alive (and immutable) for the call
                    return without_gil([&] {
                      return TensorStats::from_bytes(reinterpret_cast<const std::uint8_t*>(sv.data()),
                                                     sv.size(), memory_limit);
                    });
                  },
                  py::arg("data"), py::arg("memory_limit") = UINT64_MAX)
      .def_static("memory_needed",
                  [](const py::bytes& b) {
                    const std::string_view sv = b;
                    return TensorStats::memory_needed(reinterpret_cast<const std::uint8_t*>(sv.data()),
                                                      sv.size());
                  },
                  py::arg("data"))
      .def_property_readonly("memory_bytes", &TensorStats::memory_bytes)
      .def("search_histogram",
           [](const TensorStats& s, i64 num_bins) {
             return to_numpy(without_gil([&] { return ptq::search_histogram(s, num_bins); }));
           },
           py::arg("num_bins"))
      .def("amax_percentile", &ptq::amax_percentile, py::arg("percentile"), release)
      .def("amax_entropy", py::overload_cast<const TensorStats&, i64, i64, i64, bool>(&ptq::amax_entropy),
           py::arg("num_quantized_bins"), py::arg("start_bin"), py::arg("stride"),
           py::arg("zero_bin_from_neighbour"), release)
      .def("amax_mse", py::overload_cast<const TensorStats&, i64, i64>(&ptq::amax_mse),
           py::arg("num_bits"), py::arg("start_bin"), release)
      .def("asymmetric_range",
           [](const TensorStats& s, double percentile, i64 num_bits, bool is_signed) {
             const auto r = without_gil(
                 [&] { return ptq::asymmetric_range(s, percentile, num_bits, is_signed); });
             return py::make_tuple(r.lo, r.hi, r.scale, r.zero_point, r.qmin, r.qmax);
           },
           py::arg("percentile"), py::arg("num_bits"), py::arg("is_signed"));

  m.def("entropy_curve",
        [](const DoubleArray& bins, i64 nq, i64 start_bin, i64 stride) {
          const std::vector<double> v = to_vector(bins);
          return to_numpy(without_gil([&] { return ptq::entropy_curve(v, nq, start_bin, stride); }));
        },
        py::arg("bins"), py::arg("num_quantized_bins"), py::arg("start_bin"), py::arg("stride"));
  m.def("amax_entropy_bins",
        [](const DoubleArray& bins, double width, i64 nq, i64 start_bin, i64 stride) {
          const std::vector<double> v = to_vector(bins);
          return without_gil([&] { return ptq::amax_entropy(v, width, nq, start_bin, stride); });
        },
        py::arg("bins"), py::arg("bin_width"), py::arg("num_quantized_bins"), py::arg("start_bin"),
        py::arg("stride"));
  m.def("amax_mse_bins",
        [](const DoubleArray& bins, double width, i64 num_bits, i64 start_bin) {
          const std::vector<double> v = to_vector(bins);
          return without_gil([&] { return ptq::amax_mse(v, width, num_bits, start_bin); });
        },
        py::arg("bins"), py::arg("bin_width"), py::arg("num_bits"), py::arg("start_bin"));
  m.def("update_many",
        [](const std::vector<TensorStats*>& stats, const std::vector<py::array>& arrays, i64 threads) {
          std::vector<ptq::TensorView> views;
          views.reserve(arrays.size());
          for (const auto& a : arrays) views.push_back(view_of(a));
          without_gil([&] { ptq::update_many(stats, views, threads); });
        },
        py::arg("stats"), py::arg("arrays"), py::arg("threads"));
  m.def("default_threads", &ptq::default_threads);
  bind_kernels(m);
}
