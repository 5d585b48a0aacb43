// GPU arrays at the binding boundary: every CUDA op takes array objects (CuPy, PyTorch, Numba: anything with
// `__cuda_array_interface__`), never raw integers, so a wrong call is a Python exception instead of a crash.
//
// CudaArg reads the interface dict of one argument and checks, in this order, what the kernel depends on:
//   1. the object exposes `__cuda_array_interface__` (TypeError otherwise);
//   2. typestr is one of the dtypes the op takes (TypeError), in native byte order;
//   3. ndim and extents (ValueError), strides C-contiguous (ValueError), outputs writable (ValueError);
//   4. the pointer is device (or managed) memory of the current device (ValueError; RuntimeError with the CUDA
//      error string when the runtime cannot answer, e.g. no driver).
// Steps 1-3 need no GPU, so they are tested on any CUDA build. Each message names the argument.
//
// Stream ordering (interface v3): an array may name the stream its producer wrote it on. The op runs on the
// caller's stream; WaitForProducers makes that stream wait for each producer stream with an event (no host
// synchronisation), so a torch tensor written on a torch side stream is read after it is complete.
#pragma once

#if defined(RESUNET_WITH_CUDA)

#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cuda_check.h"

namespace resunet {

namespace py = pybind11;

struct CudaArg {
  std::string name;
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::string dtype;  // numpy name: "int16", "float32", ...
  bool has_stream = false;
  std::uintptr_t stream = 0;  // the producer's stream (interface v3); 1 legacy default, 2 per-thread default

  int64_t size() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  std::string ShapeText() const {
    std::ostringstream out;
    out << "(";
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << (shape.size() == 1 ? ",)" : ")");
    return out.str();
  }
};

namespace cuda_array_detail {

// typestr of the interface ("<f4", "|u1") -> numpy dtype name, "" for anything the ops never take.
inline std::string DtypeName(const std::string& typestr) {
  if (typestr.size() < 3) return "";
  const char order = typestr[0];
  const std::string kind_size = typestr.substr(1);
  const bool native = order == '|' || order == '=' || order == '<';  // the ops run on little-endian hosts
  if (!native) return "";
  if (kind_size == "u1") return "uint8";
  if (kind_size == "b1") return "bool";
  if (kind_size == "i2") return "int16";
  if (kind_size == "i4") return "int32";
  if (kind_size == "i8") return "int64";
  if (kind_size == "f2") return "float16";
  if (kind_size == "f4") return "float32";
  if (kind_size == "f8") return "float64";
  return "";
}

inline int64_t ItemSize(const std::string& dtype) {
  if (dtype == "uint8" || dtype == "bool") return 1;
  if (dtype == "int16" || dtype == "float16") return 2;
  if (dtype == "int32" || dtype == "float32") return 4;
  return 8;
}

inline std::string Join(std::initializer_list<const char*> names) {
  std::string out;
  size_t i = 0;
  for (const char* n : names) {
    if (i) out += (i + 1 == names.size()) ? " or " : ", ";
    out += n;
    ++i;
  }
  return out;
}

// A tuple or list field of the interface as a tuple, else ValueError naming the argument and the field.
inline py::tuple SequenceField(const py::handle& value, const std::string& name, const char* field,
                               const char* expected) {
  if (!py::isinstance<py::tuple>(value) && !py::isinstance<py::list>(value)) {
    throw py::value_error(name + ".__cuda_array_interface__['" + field + "'] must be " + expected + ", got " +
                          py::str(py::type::handle_of(value).attr("__name__")).cast<std::string>());
  }
  return py::tuple(py::reinterpret_borrow<py::object>(value));
}

// An int field (or element), else ValueError naming the argument and the field.
inline int64_t IntField(const py::handle& value, const std::string& name, const char* field) {
  if (!py::isinstance<py::int_>(value) || py::isinstance<py::bool_>(value)) {
    throw py::value_error(name + ".__cuda_array_interface__['" + field + "'] must hold ints, got " +
                          py::str(py::type::handle_of(value).attr("__name__")).cast<std::string>());
  }
  return value.cast<int64_t>();
}

}  // namespace cuda_array_detail

// Parses and checks `obj`'s interface. `dtypes`: accepted numpy names; `ndim`: required dimensions.
// Device residency is checked separately (CheckOnCurrentDevice) so that every argument's layout is checked first.
inline CudaArg ParseCudaArg(const py::handle& obj, const char* name, std::initializer_list<const char*> dtypes,
                            size_t ndim, const char* axes, bool writable) {
  using namespace cuda_array_detail;
  CudaArg arg;
  arg.name = name;
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    throw py::type_error(std::string(name) + " must be a CUDA array (an object with __cuda_array_interface__: " +
                         "CuPy, PyTorch CUDA tensor, Numba), got " +
                         py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
  }
  py::object cai = obj.attr("__cuda_array_interface__");
  if (!py::isinstance<py::dict>(cai)) {
    throw py::type_error(std::string(name) + ".__cuda_array_interface__ must be a dict, got " +
                         py::str(py::type::handle_of(cai).attr("__name__")).cast<std::string>());
  }
  py::dict d = cai.cast<py::dict>();
  for (const char* key : {"shape", "typestr", "data"}) {
    if (!d.contains(key)) {
      throw py::value_error(std::string(name) + ".__cuda_array_interface__ lacks '" + key + "'");
    }
  }

  const std::string typestr = py::str(d["typestr"]).cast<std::string>();
  arg.dtype = DtypeName(typestr);
  bool allowed = false;
  for (const char* t : dtypes) allowed = allowed || arg.dtype == t;
  if (!allowed) {
    throw py::type_error(std::string(name) + " must be " + Join(dtypes) + " (native byte order), got typestr '" +
                         typestr + "'" + (arg.dtype.empty() ? "" : " (" + arg.dtype + ")"));
  }

  const py::tuple shape = SequenceField(d["shape"], name, "shape", "a tuple of ints");
  for (const auto& s : shape) arg.shape.push_back(IntField(s, name, "shape"));
  if (arg.shape.size() != ndim) {
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D " + axes + ", got shape " +
                          arg.ShapeText());
  }
  for (int64_t s : arg.shape) {
    if (s < 0) throw py::value_error(std::string(name) + " has a negative extent: " + arg.ShapeText());
  }

  if (d.contains("strides") && !d["strides"].is_none()) {
    const py::tuple strides = SequenceField(d["strides"], name, "strides", "None or a tuple of ints");
    if (strides.size() != ndim) {
      throw py::value_error(std::string(name) + ": strides have " + std::to_string(strides.size()) +
                            " entries for " + std::to_string(ndim) + " dimensions");
    }
    // C-contiguous as numpy defines it: extents of 1 may carry any stride.
    int64_t expected = ItemSize(arg.dtype);
    for (size_t i = ndim; i-- > 0;) {
      const int64_t stride = IntField(strides[i], name, "strides");
      if (arg.shape[i] > 1 && stride != expected) {
        std::ostringstream msg;
        msg << name << " must be C-contiguous: axis " << i << " has a stride of " << stride << " bytes, expected "
            << expected << " (make a contiguous copy first)";
        throw py::value_error(msg.str());
      }
      expected *= arg.shape[i];
    }
  }

  const py::tuple data = SequenceField(d["data"], name, "data", "a (pointer, read_only) tuple");
  if (data.size() != 2) {
    throw py::value_error(std::string(name) + ".__cuda_array_interface__['data'] must be a (pointer, read_only) "
                                              "tuple");
  }
  const int64_t address = IntField(data[0], name, "data");
  if (address < 0) {
    throw py::value_error(std::string(name) + ".__cuda_array_interface__['data'] has a negative pointer");
  }
  arg.data = reinterpret_cast<void*>(static_cast<std::uintptr_t>(address));
  if (writable && py::bool_(data[1])) {
    throw py::value_error(std::string(name) + " is read-only, but the op writes its result there");
  }
  if (arg.data == nullptr && arg.size() > 0) {
    throw py::value_error(std::string(name) + " has a null data pointer but " + std::to_string(arg.size()) +
                          " elements");
  }

  if (d.contains("stream") && !d["stream"].is_none()) {
    const int64_t stream = IntField(d["stream"], name, "stream");
    if (stream <= 0) {
      // The interface reserves 0: it is ambiguous between the legacy and the per-thread default stream.
      throw py::value_error(std::string(name) + ".__cuda_array_interface__['stream'] must be None or a positive "
                                                "stream handle, got " + std::to_string(stream));
    }
    arg.has_stream = true;
    arg.stream = static_cast<std::uintptr_t>(stream);
  }
  return arg;
}

// Requires `arg`'s memory to belong to the current CUDA device (CuPy/torch allocations, managed memory).
inline void CheckOnCurrentDevice(const CudaArg& arg) {
  if (arg.size() == 0) return;
  int current = -1;
  cudaError_t status = cudaGetDevice(&current);
  const char* call = "cudaGetDevice";
  cudaPointerAttributes attributes{};
  if (status == cudaSuccess) {
    status = cudaPointerGetAttributes(&attributes, arg.data);
    call = "cudaPointerGetAttributes";
  }
  if (status != cudaSuccess) {
    cudaGetLastError();  // not sticky, but leave nothing behind for the next call
    throw std::runtime_error(arg.name + ": cannot query its pointer (" + call + ": " + cudaGetErrorString(status) +
                             ")");
  }
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) {
    throw py::value_error(arg.name + " is not GPU memory (host or unregistered pointer); pass a CUDA array");
  }
  if (attributes.type == cudaMemoryTypeDevice && attributes.device != current) {
    throw py::value_error(arg.name + " lives on CUDA device " + std::to_string(attributes.device) +
                          " but the current device is " + std::to_string(current) +
                          " (enter the array's device, e.g. `with cupy.cuda.Device(" +
                          std::to_string(attributes.device) + "):`)");
  }
}

inline cudaStream_t AsStream(std::uintptr_t handle) {
  if (handle == 1) return cudaStreamLegacy;
  if (handle == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(handle);
}

// The interface's stream encoding of the caller's stream handle (0 from CuPy means the legacy default stream).
inline std::uintptr_t CanonicalStream(std::uintptr_t handle) { return handle == 0 ? 1 : handle; }

// Makes `stream` wait (on the device, no host synchronisation) for the producer stream of every argument that names
// one. Called with the GIL released.
inline void WaitForProducers(const std::vector<const CudaArg*>& args, std::uintptr_t stream) {
  const std::uintptr_t consumer = CanonicalStream(stream);
  std::vector<std::uintptr_t> done;
  for (const CudaArg* arg : args) {
    if (!arg->has_stream || arg->stream == consumer) continue;
    bool seen = false;
    for (std::uintptr_t s : done) seen = seen || s == arg->stream;
    if (seen) continue;
    cudaEvent_t event;
    RESUNET_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    cudaError_t status = cudaEventRecord(event, AsStream(arg->stream));
    if (status == cudaSuccess) status = cudaStreamWaitEvent(AsStream(stream), event, 0);
    cudaEventDestroy(event);  // released once the wait is satisfied
    RESUNET_CUDA_CHECK(status);
    done.push_back(arg->stream);
  }
}

// Checks residency of every argument, then orders `stream` after their producers.
inline void PrepareLaunch(const std::vector<const CudaArg*>& args, std::uintptr_t stream) {
  for (const CudaArg* arg : args) CheckOnCurrentDevice(*arg);
  py::gil_scoped_release release;
  WaitForProducers(args, stream);
}

inline void RequireShape(const CudaArg& arg, const std::vector<int64_t>& expected, const std::string& why) {
  if (arg.shape != expected) {
    CudaArg want;
    want.shape = expected;
    throw py::value_error(arg.name + " must have shape " + want.ShapeText() + " (" + why + "), got " +
                          arg.ShapeText());
  }
}

}  // namespace resunet

#endif  // RESUNET_WITH_CUDA
