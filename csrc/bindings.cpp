// The one pybind11 module, resunet_trt._core. Each family of ops registers its own
// functions (csrc/bind_*.cpp); this file only adds build information.
#include <pybind11/pybind11.h>

#if defined(RESUNET_WITH_OPENMP)
#include <omp.h>
#endif
#if defined(RESUNET_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace py = pybind11;

namespace resunet {
void bind_image_ops(py::module_& m);
void bind_component_ops(py::module_& m);
}  // namespace resunet

#ifndef RESUNET_VERSION
#define RESUNET_VERSION "dev"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "resunet_trt compiled core: CT preprocessing, logit decoding and connected components (CPU and CUDA)";
  m.attr("__version__") = RESUNET_VERSION;
#if defined(RESUNET_WITH_CUDA)
  m.attr("built_with_cuda") = true;
  m.attr("cuda_version") = RESUNET_CUDA_VERSION;
#else
  m.attr("built_with_cuda") = false;
  m.attr("cuda_version") = py::none();
#endif
#if defined(RESUNET_WITH_OPENMP)
  m.attr("built_with_openmp") = true;
  m.def("openmp_max_threads", []() { return omp_get_max_threads(); },
        "Number of OpenMP threads the CPU kernels use.");
#else
  m.attr("built_with_openmp") = false;
  m.def("openmp_max_threads", []() { return 1; }, "Number of threads the CPU kernels use (no OpenMP: 1).");
#endif
  m.def(
      "cuda_device_count",
      []() {
#if defined(RESUNET_WITH_CUDA)
        int count = 0;
        if (cudaGetDeviceCount(&count) != cudaSuccess) {
          cudaGetLastError();  // clear the sticky "no device" error
          return 0;
        }
        return count;
#else
        return 0;
#endif
      },
      "Number of CUDA devices visible to this build (0 on a CPU-only build or machine).");

  resunet::bind_image_ops(m);
  resunet::bind_component_ops(m);
}
