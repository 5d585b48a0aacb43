// Bindings of the image ops: preprocess and logits_to_labels (CPU on numpy arrays, CUDA on raw
// device pointers handed over by python/resunet_trt/_image_ops.py).
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
VolumeType ParseVolumeType(const std::string& dtype) {
  if (dtype == "int16") return VolumeType::kInt16;
  if (dtype == "float32") return VolumeType::kFloat32;
  throw py::type_error("volume must be int16 or float32, got " + dtype);
}

void PreprocessCudaBinding(std::uintptr_t volume, const std::string& volume_dtype, int depth, int height, int width,
                           std::uintptr_t out, const std::string& dtype, float lo, float hi, int out_height,
                           int out_width, int context, int start, int stop, std::uintptr_t stream, float step_y,
                           float step_x, float origin_y, float origin_x, float slice_step) {
  PreprocessArgs args;
  args.depth = depth;
  args.height = height;
  args.width = width;
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
  const VolumeType volume_type = ParseVolumeType(volume_dtype);
  const PlaneType plane_type = ParsePlaneType(dtype);
  CheckPreprocessArgs(args);
  py::gil_scoped_release release;
  PreprocessCuda(reinterpret_cast<const void*>(volume), volume_type, reinterpret_cast<void*>(out), plane_type, args,
                 reinterpret_cast<cudaStream_t>(stream));
}

void LogitsToLabelsCudaBinding(std::uintptr_t logits, const std::string& logits_dtype, int batch, int classes,
                               int height, int width, std::uintptr_t labels, int out_height, int out_width,
                               std::uintptr_t stream, float step_y, float step_x, float origin_y, float origin_x) {
  LogitsType logits_type;
  if (logits_dtype == "float32") {
    logits_type = LogitsType::kFloat32;
  } else if (logits_dtype == "float16") {
    logits_type = LogitsType::kFloat16;
  } else {
    throw py::type_error("logits must be float16 or float32, got " + logits_dtype);
  }
  LogitsToLabelsArgs args;
  args.batch = batch;
  args.classes = classes;
  args.height = height;
  args.width = width;
  args.out_height = out_height;
  args.out_width = out_width;
  args.step_y = step_y;
  args.step_x = step_x;
  args.origin_y = origin_y;
  args.origin_x = origin_x;
  CheckLogitsToLabelsArgs(args);
  py::gil_scoped_release release;
  LogitsToLabelsCuda(reinterpret_cast<const void*>(logits), logits_type, reinterpret_cast<std::uint8_t*>(labels),
                     args, reinterpret_cast<cudaStream_t>(stream));
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
  m.def("preprocess_cuda", &PreprocessCudaBinding, py::arg("volume_ptr"), py::arg("volume_dtype"),
        py::arg("depth"), py::arg("height"), py::arg("width"), py::arg("out_ptr"), py::arg("dtype"), py::arg("lo"),
        py::arg("hi"), py::arg("out_height"), py::arg("out_width"), py::arg("context"), py::arg("start"),
        py::arg("stop"), py::arg("stream"), py::arg("step_y") = 0.0f, py::arg("step_x") = 0.0f,
        py::arg("origin_y") = 0.0f, py::arg("origin_x") = 0.0f, py::arg("slice_step") = 1.0f,
        "preprocess on device pointers (C-contiguous), enqueued on `stream` (a cudaStream_t as int).");
  m.def("logits_to_labels_cuda", &LogitsToLabelsCudaBinding, py::arg("logits_ptr"), py::arg("logits_dtype"),
        py::arg("batch"), py::arg("classes"), py::arg("height"), py::arg("width"), py::arg("labels_ptr"),
        py::arg("out_height"), py::arg("out_width"), py::arg("stream"), py::arg("step_y") = 0.0f,
        py::arg("step_x") = 0.0f, py::arg("origin_y") = 0.0f, py::arg("origin_x") = 0.0f,
        "logits_to_labels on device pointers (C-contiguous), enqueued on `stream` (a cudaStream_t as int).");
#endif
}

}  // namespace resunet
