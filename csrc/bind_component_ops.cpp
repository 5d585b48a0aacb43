// Bindings of connected_components, postprocess and lesion_stats (CPU on numpy arrays, CUDA on CUDA array
// objects handed over by python/resunet_trt/_component_ops.py, checked in bind_cuda_array.h). Validation happens
// here once; the kernels get plain pointers and a VolumeShape, and run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind_cuda_array.h"
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
VolumeShape ShapeOf(const CudaArg& a) { return VolumeShape{a.shape[0], a.shape[1], a.shape[2]}; }

// workspace: a C-contiguous 1-D int32 CUDA array of at least `needed` elements (the caller's allocator caches it).
CudaArg Workspace(const py::object& workspace, int64_t needed) {
  CudaArg w = ParseCudaArg(workspace, "workspace", {"int32"}, 1, "(n,)", true);
  require(w.shape[0] >= needed, "workspace must hold at least " + std::to_string(needed) + " int32, got " +
                                    std::to_string(w.shape[0]));
  return w;
}

int64_t ConnectedComponentsCudaPy(const py::object& mask, const py::object& labels, const py::object& workspace,
                                  int connectivity, std::uintptr_t stream) {
  const CudaArg in = ParseCudaArg(mask, "mask", {"uint8", "bool"}, 3, "(D, H, W)", false);
  const CudaArg out = ParseCudaArg(labels, "labels", {"int32"}, 3, "(D, H, W)", true);
  RequireShape(out, in.shape, "the shape of mask");
  const CudaArg work = Workspace(workspace, in.size());
  CheckConnectivity(connectivity);
  const VolumeShape s = ShapeOf(in);
  CheckCudaVolumeSize(s);
  PrepareLaunch({&in, &out, &work}, stream);
  py::gil_scoped_release release;
  return ConnectedComponentsCuda(static_cast<const uint8_t*>(in.data), s, Foreground::kNonZero, connectivity,
                                 static_cast<int32_t*>(out.data), static_cast<int32_t*>(work.data), AsStream(stream));
}

void PostprocessCudaPy(const py::object& labels, const py::object& out, const py::object& workspace,
                       int64_t min_lesion_voxels, int connectivity, std::uintptr_t stream) {
  const CudaArg in = ParseCudaArg(labels, "labels", {"uint8"}, 3, "(D, H, W)", false);
  const CudaArg dst = ParseCudaArg(out, "out", {"uint8"}, 3, "(D, H, W)", true);
  RequireShape(dst, in.shape, "the shape of labels");
  const CudaArg work = Workspace(workspace, 2 * in.size());
  CheckConnectivity(connectivity);
  CheckMinLesionVoxels(min_lesion_voxels);
  const VolumeShape s = ShapeOf(in);
  CheckCudaVolumeSize(s);
  PrepareLaunch({&in, &dst, &work}, stream);
  py::gil_scoped_release release;
  PostprocessCuda(static_cast<const uint8_t*>(in.data), s, min_lesion_voxels, connectivity,
                  static_cast<uint8_t*>(dst.data), static_cast<int32_t*>(work.data), AsStream(stream));
}

int64_t TumorComponentsCudaPy(const py::object& labels, const py::object& components, const py::object& workspace,
                              int connectivity, std::uintptr_t stream) {
  const CudaArg in = ParseCudaArg(labels, "labels", {"uint8"}, 3, "(D, H, W)", false);
  const CudaArg out = ParseCudaArg(components, "components", {"int32"}, 3, "(D, H, W)", true);
  RequireShape(out, in.shape, "the shape of labels");
  const CudaArg work = Workspace(workspace, in.size());
  CheckConnectivity(connectivity);
  const VolumeShape s = ShapeOf(in);
  CheckCudaVolumeSize(s);
  PrepareLaunch({&in, &out, &work}, stream);
  py::gil_scoped_release release;
  return ConnectedComponentsCuda(static_cast<const uint8_t*>(in.data), s, Foreground::kTumor, connectivity,
                                 static_cast<int32_t*>(out.data), static_cast<int32_t*>(work.data), AsStream(stream),
                                 2);
}

void ComponentStatsCudaPy(const py::object& components, int64_t count, const py::object& voxels,
                          const py::object& bbox, const py::object& centroid, std::uintptr_t stream) {
  const CudaArg comp = ParseCudaArg(components, "components", {"int32"}, 3, "(D, H, W)", false);
  require(count >= 0, "count must be >= 0, got " + std::to_string(count));
  const CudaArg vox = ParseCudaArg(voxels, "voxels", {"int64"}, 1, "(n,)", true);
  const CudaArg box = ParseCudaArg(bbox, "bbox", {"int64"}, 2, "(n, 6)", true);
  const CudaArg cen = ParseCudaArg(centroid, "centroid", {"float64"}, 2, "(n, 3)", true);
  RequireShape(vox, {count}, "one row per component");
  RequireShape(box, {count, 6}, "one row per component");
  RequireShape(cen, {count, 3}, "one row per component");
  const VolumeShape s = ShapeOf(comp);
  CheckCudaVolumeSize(s);
  PrepareLaunch({&comp, &vox, &box, &cen}, stream);
  py::gil_scoped_release release;
  ComponentStatsCuda(static_cast<const int32_t*>(comp.data), s, count, static_cast<int64_t*>(vox.data),
                     static_cast<int64_t*>(box.data), static_cast<double*>(cen.data), AsStream(stream));
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
  m.def("connected_components_cuda", &ConnectedComponentsCudaPy, py::arg("mask"), py::arg("labels"),
        py::arg("workspace"), py::arg("connectivity"), py::arg("stream"),
        "CUDA connected components: mask (D, H, W) uint8/bool -> labels int32 (D, H, W), workspace int32 (>= D*H*W); "
        "C-contiguous CUDA arrays on the current device. Returns the count (one stream synchronisation).");
  m.def("postprocess_cuda", &PostprocessCudaPy, py::arg("labels"), py::arg("out"), py::arg("workspace"),
        py::arg("min_lesion_voxels"), py::arg("connectivity"), py::arg("stream"),
        "CUDA postprocess: labels (D, H, W) uint8 -> out uint8, workspace int32 (>= 2*D*H*W); one stream "
        "synchronisation to report invalid values.");
  m.def("tumor_components_cuda", &TumorComponentsCudaPy, py::arg("labels"), py::arg("components"),
        py::arg("workspace"), py::arg("connectivity"), py::arg("stream"),
        "CUDA components of label == 2 (values > 2 rejected): components int32 (D, H, W); returns the count "
        "(one synchronisation).");
  m.def("component_stats_cuda", &ComponentStatsCudaPy, py::arg("components"), py::arg("count"), py::arg("voxels"),
        py::arg("bbox"), py::arg("centroid"), py::arg("stream"),
        "Per-component voxels (n,) int64, bbox (n, 6) int64 and centroid (n, 3) float64 from a raster-ordered "
        "component label volume (no sync).");
#endif
}

}  // namespace resunet
