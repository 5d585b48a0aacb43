// Shared host/device annotations and error helpers for the compiled core.
#pragma once

#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define RESUNET_HD __host__ __device__ __forceinline__
#else
#define RESUNET_HD inline
#endif

namespace resunet {

// Thrown (and turned into ValueError by pybind11) for bad arguments that reach C++.
inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace resunet
