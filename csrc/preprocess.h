// preprocess: CT volume (D, H, W) in HU -> 2.5D network input (N, K, h, w), N = stop - start.
//
// Contract (resunet_trt.kernels.preprocess):
//   1. per voxel: clip to the window [lo, hi] and scale to [0, 1] as (v - lo) / (hi - lo);
//   2. bilinear resample of each (H, W) plane to (h, w), see common/bilinear.h. Per axis either the
//      torch mapping (step 0: torch.nn.functional.interpolate(mode="bilinear", align_corners=False),
//      half-pixel centres, no antialiasing) or the general mapping: output y samples input row
//      (y + 0.5) * step_y + origin_y - 0.5; outside [-0.5, H - 0.5] the output is 0.0 (padding: the
//      windowed value of air), inside the coordinate is clamped to [0, H - 1]. Same for x.
//   3. channel j of output slice i samples the volume at z = clamp(start + i + (j - K/2) * slice_step,
//      0, D - 1), blending slices floor(z) and floor(z) + 1 linearly (common/bilinear.h slice_tap);
//      slice_step = 1 reads slice clamp(start + i + j - K/2, 0, D - 1) exactly.
// Input int16 or float32, output float32 or float16, both C-contiguous. Every input slice that some
// output reads is read and resized once; since the resize is linear, a channel between two slices is
// the blend of their resized planes.
//
// Non-finite HU in float32 volumes: the CPU kernel checks every voxel of the slab from the first to
// the last slice it reads (PreprocessSliceRange) while it reads them and throws std::invalid_argument
// naming `volume` (and the slice); the CUDA kernel assumes a finite volume (the Python layer checks
// the same slab before the launch).
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
  float step_y = 0.0f;    // input rows per output row; 0: the torch mapping (scale H / h)
  float step_x = 0.0f;    // input columns per output column; 0: the torch mapping (scale W / w)
  float origin_y = 0.0f;  // general mapping only (must be 0 with step 0)
  float origin_x = 0.0f;
  float slice_step = 1.0f;  // input slices per context step, > 0
};

// The first and last input slice that some output (i, j) reads.
void PreprocessSliceRange(const PreprocessArgs& args, int* first, int* last);

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
