// Every CUDA runtime call goes through RESUNET_CUDA_CHECK: a failure becomes a
// std::runtime_error (RuntimeError in Python) carrying cudaGetErrorString.
#pragma once

#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>

namespace resunet {

inline void cuda_check(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) {
    std::ostringstream msg;
    msg << "CUDA error in " << what << " (" << file << ":" << line << "): " << cudaGetErrorString(status);
    throw std::runtime_error(msg.str());
  }
}

}  // namespace resunet

#define RESUNET_CUDA_CHECK(expr) ::resunet::cuda_check((expr), #expr, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations without synchronising.
#define RESUNET_CUDA_CHECK_LAUNCH() ::resunet::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
