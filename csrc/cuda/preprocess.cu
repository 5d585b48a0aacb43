// CUDA preprocess: HU window + bilinear resize + 2.5D stacking, bandwidth-bound by design.
//
// One thread per (input slice s, output pixel y, x): it reads the 2x2 neighbourhood of (y, x) in
// slice s, windows and blends it (common/bilinear.h, the same float operations as the CPU kernel),
// and stores the value into every (output slice i, channel j) that shows slice s - K stores for an
// interior slice, more for the clamped edge slices. So each input voxel is read from memory once and
// each output value written once, whatever the context K; a thread-per-output-value design would read
// every input slice K times.
//
// Blocks are 32 x 8 pixels of one slice: a warp covers 32 neighbouring output columns, so its loads
// hit one or two runs of contiguous input and its stores are contiguous (64 B for fp16, 128 B for
// fp32). Slices run along grid z; taps are recomputed per thread (a few float ops, cheaper than a
// table read).
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

#include "common/bilinear.h"
#include "common/cuda_check.h"
#include "preprocess.h"

namespace resunet {
namespace {

constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr int kMaxGridZ = 65535;

__device__ __forceinline__ float LoadHu(const std::int16_t* p) { return static_cast<float>(__ldg(p)); }
__device__ __forceinline__ float LoadHu(const float* p) { return __ldg(p); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__half* p, float v) { *p = __float2half_rn(v); }

struct Launch {
  PreprocessArgs args;
  float range;    // hi - lo
  float scale_y;  // H / h
  float scale_x;  // W / w
  int s_first;    // first input slice read
  int n_slices;   // input slices read
};

template <typename In, typename Out>
__global__ void PreprocessKernel(const In* __restrict__ volume, Out* __restrict__ out, Launch l) {
  const PreprocessArgs& a = l.args;
  const int x = blockIdx.x * kBlockX + threadIdx.x;
  const int y = blockIdx.y * kBlockY + threadIdx.y;
  if (x >= a.out_width || y >= a.out_height) return;

  const LinearTap tx = linear_tap(x, a.width, l.scale_x);
  const LinearTap ty = linear_tap(y, a.height, l.scale_y);
  const std::size_t plane_in = static_cast<std::size_t>(a.height) * a.width;
  const std::size_t plane_out = static_cast<std::size_t>(a.out_height) * a.out_width;
  const std::size_t row0 = static_cast<std::size_t>(ty.i0) * a.width;
  const std::size_t row1 = static_cast<std::size_t>(ty.i1) * a.width;
  const std::size_t pixel_out = static_cast<std::size_t>(y) * a.out_width + x;
  const int half_k = a.context / 2;
  const int n_out = a.stop - a.start;

  for (int z = blockIdx.z; z < l.n_slices; z += gridDim.z) {
    const int s = l.s_first + z;
    const In* p = volume + static_cast<std::size_t>(s) * plane_in;
    const float v00 = window_rn(LoadHu(p + row0 + tx.i0), a.lo, a.hi, l.range);
    const float v01 = window_rn(LoadHu(p + row0 + tx.i1), a.lo, a.hi, l.range);
    const float v10 = window_rn(LoadHu(p + row1 + tx.i0), a.lo, a.hi, l.range);
    const float v11 = window_rn(LoadHu(p + row1 + tx.i1), a.lo, a.hi, l.range);
    const float v = bilerp_rn(v00, v01, v10, v11, ty, tx);

    // Output (i, j) shows slice clamp(start + i + j - K/2, 0, D - 1); u = start + i + j - K/2 must lie
    // in [u_lo, u_hi], which is just {s} except at the volume's first and last slice.
    const int u_lo = s == 0 ? INT_MIN / 2 : s;
    const int u_hi = s == a.depth - 1 ? INT_MAX / 2 : s;
    for (int j = 0; j < a.context; ++j) {
      const int shift = a.start + j - half_k;  // u = i + shift
      const int i_lo = max(u_lo - shift, 0);
      const int i_hi = min(u_hi - shift, n_out - 1);
      for (int i = i_lo; i <= i_hi; ++i) {
        Store(out + (static_cast<std::size_t>(i) * a.context + j) * plane_out + pixel_out, v);
      }
    }
  }
}

template <typename In, typename Out>
void LaunchTyped(const void* volume, void* out, const Launch& l, cudaStream_t stream) {
  const PreprocessArgs& a = l.args;
  const dim3 block(kBlockX, kBlockY, 1);
  const dim3 grid((a.out_width + kBlockX - 1) / kBlockX, (a.out_height + kBlockY - 1) / kBlockY,
                  l.n_slices < kMaxGridZ ? l.n_slices : kMaxGridZ);
  PreprocessKernel<In, Out><<<grid, block, 0, stream>>>(static_cast<const In*>(volume), static_cast<Out*>(out), l);
  RESUNET_CUDA_CHECK_LAUNCH();
}

}  // namespace

void PreprocessCuda(const void* volume, VolumeType volume_type, void* out, PlaneType plane_type,
                    const PreprocessArgs& args, cudaStream_t stream) {
  CheckPreprocessArgs(args);
  require((args.out_height + kBlockY - 1) / kBlockY <= 65535, "out_size height is too large for the CUDA kernel");
  Launch l;
  l.args = args;
  l.range = sub_rn(args.hi, args.lo);
  l.scale_y = linear_scale(args.height, args.out_height);
  l.scale_x = linear_scale(args.width, args.out_width);
  const int half_k = args.context / 2;
  l.s_first = args.start - half_k < 0 ? 0 : args.start - half_k;
  const int s_last = args.stop - 1 + half_k > args.depth - 1 ? args.depth - 1 : args.stop - 1 + half_k;
  l.n_slices = s_last - l.s_first + 1;
  if (volume_type == VolumeType::kInt16) {
    if (plane_type == PlaneType::kFloat32) {
      LaunchTyped<std::int16_t, float>(volume, out, l, stream);
    } else {
      LaunchTyped<std::int16_t, __half>(volume, out, l, stream);
    }
  } else {
    if (plane_type == PlaneType::kFloat32) {
      LaunchTyped<float, float>(volume, out, l, stream);
    } else {
      LaunchTyped<float, __half>(volume, out, l, stream);
    }
  }
}

}  // namespace resunet
