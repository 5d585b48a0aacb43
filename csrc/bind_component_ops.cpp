// Bindings of connected_components, postprocess and lesion_stats (CPU on numpy arrays, CUDA on raw device
// pointers handed over by python/resunet_trt/_component_ops.py). Validation happens here once; the kernels
// get plain pointers and a VolumeShape, and run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/macros.h"
#include "connected_components.h"
#include "postprocess.h"

namespace py = pybind11;

namespace resunet {
namespace {

// Checks a (D, H, W) C-contiguous uint8 numpy array and returns its shape.
VolumeShape CheckVolume(const py::array& a, const char* name) {
  require(a.ndim() == 3, std::string(name) + " must be a 3-D (D, H, W) array, got " + std::to_string(a.ndim()) +
                             " dimensions");
  require(a.dtype().is(py::dtype::of<uint8_t>()),
          std::string(name) + " must be uint8 here (the Python wrapper converts bool), got " +
              std::string(py::str(a.dtype())));
  require((a.flags() & py::array::c_style) != 0, std::string(name) + " must be C-contiguous");
  return VolumeShape{a.shape(0), a.shape(1), a.shape(2)};
}

py::tuple ConnectedComponentsCpuPy(const py::array& mask, int connectivity) {
  const VolumeShape shape = CheckVolume(mask, "mask");
  CheckConnectivity(connectivity);
  py::array_t<int32_t> labels({shape.depth, shape.height, shape.width});
  const auto* in = static_cast<const uint8_t*>(mask.data());
  int32_t* out = labels.mutable_data();
  int64_t count;
  {
    py::gil_scoped_release release;
    count = ConnectedComponentsCpu(in, shape, connectivity, out);
  }
  return py::make_tuple(labels, count);
}

py::array PostprocessCpuPy(const py::array& labels, int64_t min_lesion_voxels, int connectivity) {
  const VolumeShape shape = CheckVolume(labels, "labels");
  CheckConnectivity(connectivity);
  CheckMinLesionVoxels(min_lesion_voxels);
  py::array_t<uint8_t> out({shape.depth, shape.height, shape.width});
  const auto* in = static_cast<const uint8_t*>(labels.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    PostprocessCpu(in, shape, min_lesion_voxels, connectivity, dst);
  }
  return out;
}

py::dict LesionStatsCpuPy(const py::array& labels, int connectivity) {
  const VolumeShape shape = CheckVolume(labels, "labels");
  CheckConnectivity(connectivity);
  py::array_t<int32_t> components({shape.depth, shape.height, shape.width});
  const auto* in = static_cast<const uint8_t*>(labels.data());
  int32_t* dst = components.mutable_data();
  LesionStatsResult res;
  {
    py::gil_scoped_release release;
    res = LesionStatsCpu(in, shape, connectivity, dst);
  }
  const py::ssize_t n = static_cast<py::ssize_t>(res.count);
  py::array_t<int64_t> voxels(n);
  py::array_t<int64_t> bbox({n, py::ssize_t{6}});
  py::array_t<double> centroid({n, py::ssize_t{3}});
  std::copy(res.voxels.begin(), res.voxels.end(), voxels.mutable_data());
  std::copy(res.bbox.begin(), res.bbox.end(), bbox.mutable_data());
  std::copy(res.centroid.begin(), res.centroid.end(), centroid.mutable_data());
  py::dict d;
  d["count"] = res.count;
  d["voxels"] = voxels;
  d["bbox"] = bbox;
  d["centroid"] = centroid;
  d["component_labels"] = components;
  return d;
}

#if defined(RESUNET_WITH_CUDA)
VolumeShape ShapeFromTuple(const py::tuple& shape, const char* name) {
  require(shape.size() == 3, std::string(name) + " must be a 3-D (D, H, W) array");
  VolumeShape s{shape[0].cast<int64_t>(), shape[1].cast<int64_t>(), shape[2].cast<int64_t>()};
  require(s.depth >= 0 && s.height >= 0 && s.width >= 0, std::string(name) + " has a negative extent");
  return s;
}

cudaStream_t AsStream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

int64_t ConnectedComponentsCudaPy(std::uintptr_t mask, const py::tuple& shape, int connectivity,
                                  std::uintptr_t labels, std::uintptr_t workspace, std::uintptr_t stream) {
  const VolumeShape s = ShapeFromTuple(shape, "mask");
  CheckConnectivity(connectivity);
  py::gil_scoped_release release;
  return ConnectedComponentsCuda(reinterpret_cast<const uint8_t*>(mask), s, Foreground::kNonZero, connectivity,
                                 reinterpret_cast<int32_t*>(labels), reinterpret_cast<int32_t*>(workspace),
                                 AsStream(stream));
}

void PostprocessCudaPy(std::uintptr_t labels, const py::tuple& shape, int64_t min_lesion_voxels, int connectivity,
                       std::uintptr_t out, std::uintptr_t workspace, std::uintptr_t stream) {
  const VolumeShape s = ShapeFromTuple(shape, "labels");
  CheckConnectivity(connectivity);
  CheckMinLesionVoxels(min_lesion_voxels);
  py::gil_scoped_release release;
  PostprocessCuda(reinterpret_cast<const uint8_t*>(labels), s, min_lesion_voxels, connectivity,
                  reinterpret_cast<uint8_t*>(out), reinterpret_cast<int32_t*>(workspace), AsStream(stream));
}

int64_t TumorComponentsCudaPy(std::uintptr_t labels, const py::tuple& shape, int connectivity,
                              std::uintptr_t components, std::uintptr_t workspace, std::uintptr_t stream) {
  const VolumeShape s = ShapeFromTuple(shape, "labels");
  CheckConnectivity(connectivity);
  py::gil_scoped_release release;
  return ConnectedComponentsCuda(reinterpret_cast<const uint8_t*>(labels), s, Foreground::kTumor, connectivity,
                                 reinterpret_cast<int32_t*>(components), reinterpret_cast<int32_t*>(workspace),
                                 AsStream(stream), 2);
}

void ComponentStatsCudaPy(std::uintptr_t components, const py::tuple& shape, int64_t count, std::uintptr_t voxels,
                          std::uintptr_t bbox, std::uintptr_t centroid, std::uintptr_t stream) {
  const VolumeShape s = ShapeFromTuple(shape, "component_labels");
  py::gil_scoped_release release;
  ComponentStatsCuda(reinterpret_cast<const int32_t*>(components), s, count, reinterpret_cast<int64_t*>(voxels),
                     reinterpret_cast<int64_t*>(bbox), reinterpret_cast<double*>(centroid), AsStream(stream));
}
#endif

}  // namespace

void bind_component_ops(py::module_& m) {
  m.def("connected_components_cpu", &ConnectedComponentsCpuPy, py::arg("mask"), py::arg("connectivity"),
        "Label uint8 (D, H, W) C-contiguous mask (nonzero = foreground) -> (int32 labels, count), raster order.");
  m.def("postprocess_cpu", &PostprocessCpuPy, py::arg("labels"), py::arg("min_lesion_voxels"),
        py::arg("connectivity"),
        "Keep the largest liver component, drop tumor outside it, small tumor components -> liver (uint8).");
  m.def("lesion_stats_cpu", &LesionStatsCpuPy, py::arg("labels"), py::arg("connectivity"),
        "Tumor components (label == 2): dict of count, voxels, bbox, centroid, component_labels.");
#if defined(RESUNET_WITH_CUDA)
  m.def("connected_components_cuda", &ConnectedComponentsCudaPy, py::arg("mask_ptr"), py::arg("shape"),
        py::arg("connectivity"), py::arg("labels_ptr"), py::arg("workspace_ptr"), py::arg("stream"),
        "CUDA connected components on device pointers; returns the count (one stream synchronisation).");
  m.def("postprocess_cuda", &PostprocessCudaPy, py::arg("labels_ptr"), py::arg("shape"),
        py::arg("min_lesion_voxels"), py::arg("connectivity"), py::arg("out_ptr"), py::arg("workspace_ptr"),
        py::arg("stream"),
        "CUDA postprocess on device pointers (one stream synchronisation to report invalid values).");
  m.def("tumor_components_cuda", &TumorComponentsCudaPy, py::arg("labels_ptr"), py::arg("shape"),
        py::arg("connectivity"), py::arg("components_ptr"), py::arg("workspace_ptr"), py::arg("stream"),
        "CUDA components of label == 2 (values > 2 rejected); returns the count (one synchronisation).");
  m.def("component_stats_cuda", &ComponentStatsCudaPy, py::arg("components_ptr"), py::arg("shape"),
        py::arg("count"), py::arg("voxels_ptr"), py::arg("bbox_ptr"), py::arg("centroid_ptr"), py::arg("stream"),
        "Per-component voxels, bbox and centroid from a raster-ordered component label volume (no sync).");
#endif
}

}  // namespace resunet
