// Bindings of the image ops: preprocess and logits_to_labels (CPU on numpy arrays, CUDA on CUDA array
// objects handed over by python/resunet_trt/_image_ops.py, checked in bind_cuda_array.h).
//
// The Python layer validates user arguments with friendly messages and makes arrays C-contiguous;
// this layer checks again what memory safety depends on (ndim, dtype, contiguity, sizes), allocates
// the numpy outputs and releases the GIL around the kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "bind_cuda_array.h"
#include "logits_to_labels.h"
#include "preprocess.h"

namespace py = pybind11;

namespace resunet {
namespace {

int CheckedDim(py::ssize_t size, const char* name) {
  if (size > INT_MAX) {
    std::ostringstream msg;
    msg << name << " has a dimension of " << size << ", more than the kernels support (" << INT_MAX << ")";
    throw std::invalid_argument(msg.str());
  }
  return static_cast<int>(size);
}

std::string DtypeName(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void RequireCContiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  }
}

PlaneType ParsePlaneType(const std::string& dtype) {
  if (dtype == "float32") return PlaneType::kFloat32;
  if (dtype == "float16") return PlaneType::kFloat16;
  throw std::invalid_argument("dtype must be 'float16' or 'float32', got '" + dtype + "'");
}

py::array PreprocessCpuBinding(const py::array& volume, float lo, float hi, int out_height, int out_width,
                               int context, const std::string& dtype, int start, int stop, float step_y,
                               float step_x, float origin_y, float origin_x, float slice_step) {
  if (volume.ndim() != 3) {
    throw std::invalid_argument("volume must be 3-D (D, H, W), got ndim=" + std::to_string(volume.ndim()));
  }
  VolumeType volume_type;
  if (py::isinstance<py::array_t<std::int16_t>>(volume)) {
    volume_type = VolumeType::kInt16;
  } else if (py::isinstance<py::array_t<float>>(volume)) {
    volume_type = VolumeType::kFloat32;
  } else {
    throw py::type_error("volume must be int16 or float32 (native byte order), got " + DtypeName(volume));
  }
  RequireCContiguous(volume, "volume");
  const PlaneType plane_type = ParsePlaneType(dtype);

  PreprocessArgs args;
  args.depth = CheckedDim(volume.shape(0), "volume");
  args.height = CheckedDim(volume.shape(1), "volume");
  args.width = CheckedDim(volume.shape(2), "volume");
  args.out_height = out_height;
  args.out_width = out_width;
  args.context = context;
  args.start = start;
  args.stop = stop;
  args.lo = lo;
  args.hi = hi;
  args.step_y = step_y;
  args.step_x = step_x;
  args.origin_y = origin_y;
  args.origin_x = origin_x;
  args.slice_step = slice_step;
  CheckPreprocessArgs(args);

  const std::vector<py::ssize_t> shape{stop - start, context, out_height, out_width};
  py::array out(py::dtype(plane_type == PlaneType::kFloat16 ? "float16" : "float32"), shape);
  const void* in_ptr = volume.data();
  void* out_ptr = out.mutable_data();
  {
    py::gil_scoped_release release;
    PreprocessCpu(in_ptr, volume_type, out_ptr, plane_type, args);
  }
  return out;
}

py::array LogitsToLabelsCpuBinding(const py::array& logits, int out_height, int out_width, float step_y,
                                   float step_x, float origin_y, float origin_x) {
  if (logits.ndim() != 4) {
    throw std::invalid_argument("logits must be 4-D (N, C, h, w), got ndim=" + std::to_string(logits.ndim()));
  }
  LogitsType logits_type;
  if (py::isinstance<py::array_t<float>>(logits)) {
    logits_type = LogitsType::kFloat32;
  } else if (logits.dtype().char_() == 'e' && logits.dtype().attr("isnative").cast<bool>()) {
    logits_type = LogitsType::kFloat16;
  } else {
    throw py::type_error("logits must be float16 or float32 (native byte order), got " + DtypeName(logits));
  }
  RequireCContiguous(logits, "logits");

  LogitsToLabelsArgs args;
  args.batch = CheckedDim(logits.shape(0), "logits");
  args.classes = CheckedDim(logits.shape(1), "logits");
  args.height = CheckedDim(logits.shape(2), "logits");
  args.width = CheckedDim(logits.shape(3), "logits");
  args.out_height = out_height;
  args.out_width = out_width;
  args.step_y = step_y;
  args.step_x = step_x;
  args.origin_y = origin_y;
  args.origin_x = origin_x;
  CheckLogitsToLabelsArgs(args);

  py::array_t<std::uint8_t> labels({static_cast<py::ssize_t>(args.batch), static_cast<py::ssize_t>(out_height),
                                    static_cast<py::ssize_t>(out_width)});
  const void* in_ptr = logits.data();
  std::uint8_t* out_ptr = labels.mutable_data();
  {
    py::gil_scoped_release release;
    LogitsToLabelsCpu(in_ptr, logits_type, out_ptr, args);
  }
  return labels;
}

#if defined(RESUNET_WITH_CUDA)
void PreprocessCudaBinding(const py::object& volume, const py::object& out, float lo, float hi, int context,
                           int start, int stop, std::uintptr_t stream, float step_y, float step_x, float origin_y,
                           float origin_x, float slice_step) {
  const CudaArg vol = ParseCudaArg(volume, "volume", {"int16", "float32"}, 3, "(D, H, W)", false);
  const CudaArg dst = ParseCudaArg(out, "out", {"float16", "float32"}, 4, "(N, K, h, w)", true);
  PreprocessArgs args;
  args.depth = CheckedDim(vol.shape[0], "volume");
  args.height = CheckedDim(vol.shape[1], "volume");
  args.width = CheckedDim(vol.shape[2], "volume");
  args.out_height = CheckedDim(dst.shape[2], "out");
  args.out_width = CheckedDim(dst.shape[3], "out");
  args.context = context;
  args.start = start;
  args.stop = stop;
  args.lo = lo;
  args.hi = hi;
  args.step_y = step_y;
  args.step_x = step_x;
  args.origin_y = origin_y;
  args.origin_x = origin_x;
  args.slice_step = slice_step;
  CheckPreprocessArgs(args);
  RequireShape(dst, {static_cast<int64_t>(stop) - start, context, dst.shape[2], dst.shape[3]},
               "stop - start slices of context channels");
  const VolumeType volume_type = vol.dtype == "int16" ? VolumeType::kInt16 : VolumeType::kFloat32;
  const PlaneType plane_type = dst.dtype == "float16" ? PlaneType::kFloat16 : PlaneType::kFloat32;
  PrepareLaunch({&vol, &dst}, stream);
  py::gil_scoped_release release;
  PreprocessCuda(vol.data, volume_type, dst.data, plane_type, args, AsStream(stream));
}

void LogitsToLabelsCudaBinding(const py::object& logits, const py::object& labels, std::uintptr_t stream,
                               float step_y, float step_x, float origin_y, float origin_x) {
  const CudaArg src = ParseCudaArg(logits, "logits", {"float16", "float32"}, 4, "(N, C, h, w)", false);
  const CudaArg dst = ParseCudaArg(labels, "labels", {"uint8"}, 3, "(N, H, W)", true);
  LogitsToLabelsArgs args;
  args.batch = CheckedDim(src.shape[0], "logits");
  args.classes = CheckedDim(src.shape[1], "logits");
  args.height = CheckedDim(src.shape[2], "logits");
  args.width = CheckedDim(src.shape[3], "logits");
  args.out_height = CheckedDim(dst.shape[1], "labels");
  args.out_width = CheckedDim(dst.shape[2], "labels");
  args.step_y = step_y;
  args.step_x = step_x;
  args.origin_y = origin_y;
  args.origin_x = origin_x;
  CheckLogitsToLabelsArgs(args);
  RequireShape(dst, {src.shape[0], dst.shape[1], dst.shape[2]}, "one label map per logits sample");
  const LogitsType logits_type = src.dtype == "float16" ? LogitsType::kFloat16 : LogitsType::kFloat32;
  PrepareLaunch({&src, &dst}, stream);
  py::gil_scoped_release release;
  LogitsToLabelsCuda(src.data, logits_type, static_cast<std::uint8_t*>(dst.data), args, AsStream(stream));
}
#endif

}  // namespace

void bind_image_ops(py::module_& m) {
  m.def("preprocess_cpu", &PreprocessCpuBinding, py::arg("volume"), py::arg("lo"), py::arg("hi"),
        py::arg("out_height"), py::arg("out_width"), py::arg("context"), py::arg("dtype"), py::arg("start"),
        py::arg("stop"), py::arg("step_y") = 0.0f, py::arg("step_x") = 0.0f, py::arg("origin_y") = 0.0f,
        py::arg("origin_x") = 0.0f, py::arg("slice_step") = 1.0f,
        "HU window + bilinear resample + 2.5D stacking on the CPU: volume (D, H, W) int16/float32, C-contiguous "
        "-> (stop - start, context, out_height, out_width) float16/float32. step 0: the torch mapping.");
  m.def("logits_to_labels_cpu", &LogitsToLabelsCpuBinding, py::arg("logits"), py::arg("out_height"),
        py::arg("out_width"), py::arg("step_y") = 0.0f, py::arg("step_x") = 0.0f, py::arg("origin_y") = 0.0f,
        py::arg("origin_x") = 0.0f,
        "Bilinear resample fused with argmax on the CPU: logits (N, C, h, w) float16/float32, C-contiguous -> "
        "uint8 (N, out_height, out_width). step/origin: preprocess's mapping, inverted; step 0: torch's.");
#if defined(RESUNET_WITH_CUDA)
  m.def("preprocess_cuda", &PreprocessCudaBinding, py::arg("volume"), py::arg("out"), py::arg("lo"),
        py::arg("hi"), py::arg("context"), py::arg("start"), py::arg("stop"), py::arg("stream"),
        py::arg("step_y") = 0.0f, py::arg("step_x") = 0.0f, py::arg("origin_y") = 0.0f, py::arg("origin_x") = 0.0f,
        py::arg("slice_step") = 1.0f,
        "preprocess on CUDA arrays: volume (D, H, W) int16/float32 -> out (stop - start, K, h, w) float16/float32, "
        "both C-contiguous on the current device; enqueued on `stream` (a cudaStream_t as int) after the "
        "arrays' producer streams.");
  m.def("logits_to_labels_cuda", &LogitsToLabelsCudaBinding, py::arg("logits"), py::arg("labels"),
        py::arg("stream"), py::arg("step_y") = 0.0f, py::arg("step_x") = 0.0f, py::arg("origin_y") = 0.0f,
        py::arg("origin_x") = 0.0f,
        "logits_to_labels on CUDA arrays: logits (N, C, h, w) float16/float32 -> labels (N, H, W) uint8, both "
        "C-contiguous on the current device; enqueued on `stream` after the arrays' producer streams.");
#endif
}

}  // namespace resunet
