// preprocess: CT volume (D, H, W) in HU -> 2.5D network input (N, K, h, w), N = stop - start.
//
// Contract (resunet_trt.kernels.preprocess):
//   1. per voxel: clip to the window [lo, hi] and scale to [0, 1] as (v - lo) / (hi - lo);
//   2. bilinear resize of each (H, W) plane to (h, w), half-pixel centres, no antialiasing
//      (torch.nn.functional.interpolate(mode="bilinear", align_corners=False)), see common/bilinear.h;
//   3. channel j of output slice i is input slice clamp(start + i + j - K/2, 0, D - 1).
// Input int16 or float32, output float32 or float16, both C-contiguous. Every input slice in
// [start - K/2, stop - 1 + K/2] (clamped) is read and resized once, then written to each output
// channel that shows it.
//
// Non-finite HU in float32 volumes: the CPU kernel checks every voxel of the slices it reads while
// it reads them and throws std::invalid_argument naming `volume` (and the slice); the CUDA kernel
// assumes a finite volume (the Python layer checks before the launch).
#pragma once

#include <cstdint>

#if defined(RESUNET_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace resunet {

enum class VolumeType { kInt16, kFloat32 };
enum class PlaneType { kFloat32, kFloat16 };

struct PreprocessArgs {
  int depth = 0;   // D
  int height = 0;  // H
  int width = 0;   // W
  int out_height = 0;  // h
  int out_width = 0;   // w
  int context = 1;     // K, odd
  int start = 0;       // first output slice (input index), 0 <= start < stop <= D
  int stop = 0;
  float lo = 0.0f;  // window, lo < hi
  float hi = 1.0f;
};

// Throws std::invalid_argument when the arguments break the contract above.
void CheckPreprocessArgs(const PreprocessArgs& args);

// volume: D*H*W elements of `volume_type`; out: (stop-start)*K*h*w elements of `plane_type`.
void PreprocessCpu(const void* volume, VolumeType volume_type, void* out, PlaneType plane_type,
                   const PreprocessArgs& args);

#if defined(RESUNET_WITH_CUDA)
// Device pointers; enqueued on `stream`, never synchronises.
void PreprocessCuda(const void* volume, VolumeType volume_type, void* out, PlaneType plane_type,
                    const PreprocessArgs& args, cudaStream_t stream);
#endif

}  // namespace resunet
