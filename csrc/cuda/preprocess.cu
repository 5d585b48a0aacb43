// CUDA preprocess: HU window + bilinear resample + 2.5D stacking, bandwidth-bound by design.
//
// One thread per output pixel (y, x) and chunk of input slices: it walks the chunk's slices s in
// order, reads the 2x2 neighbourhood of (y, x) in slice s, windows and blends it (common/bilinear.h,
// the same float operations as the CPU kernel) and stores every output (i, j) that slice s completes.
// Output (i, j) samples z = clamp(start + i + (j - K/2) * slice_step, 0, D - 1); it is completed by
// slice ceil(z): the value of that slice when z is integral, else the blend of the previous slice's
// value (kept in a register) and this one. For slice_step = 1 that is K stores per interior slice and
// every input voxel is read once, whatever the context K. With a fractional slice_step the slice just
// before a chunk is read a second time, by the chunk that needs it for a blend (1 extra read per
// kChunk slices); a thread-per-output-value design would read every input slice about 2K times.
// Slices no output reads (slice_step > 1 on a thin slab) are skipped.
//
// Which outputs slice s completes: for channel j, u(i) = start + i + (j - K/2) * slice_step grows by
// 1 per output slice, so at most two i satisfy s - 1 < u(i) <= s; the kernel tests the three
// candidates around s - start - (j - K/2) * slice_step with the exact float tap (slice_tap). At the
// first and last input slice the clamp makes every output beyond them land there, so the candidate
// range extends to the first or last output slice.
//
// Blocks are 32 x 8 pixels: a warp covers 32 neighbouring output columns, so its loads hit one or two
// runs of contiguous input and its stores are contiguous (64 B for fp16, 128 B for fp32). Slice chunks
// run along grid z; taps are recomputed per thread (a few float ops, cheaper than a table read).
#include <cuda_fp16.h>

#include <cstdint>

#include "common/bilinear.h"
#include "common/cuda_check.h"
#include "preprocess.h"

namespace resunet {
namespace {

constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr int kChunk = 8;  // input slices per thread
constexpr int kMaxGridZ = 65535;

__device__ __forceinline__ float LoadHu(const std::int16_t* p) { return static_cast<float>(__ldg(p)); }
__device__ __forceinline__ float LoadHu(const float* p) { return __ldg(p); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__half* p, float v) { *p = __float2half_rn(v); }

struct Launch {
  PreprocessArgs args;
  float range;  // hi - lo
  AxisMap map_y;
  AxisMap map_x;
  int s_first;  // first input slice read
  int s_last;   // last input slice read
  int chunk;    // input slices per grid z index
};

// The windowed, resampled value of pixel (ty, tx) in slice s.
template <typename In>
__device__ __forceinline__ float Sample(const In* __restrict__ volume, const Launch& l, int s, const LinearTap& ty,
                                        const LinearTap& tx) {
  const PreprocessArgs& a = l.args;
  const In* p = volume + static_cast<std::size_t>(s) * a.height * a.width;
  const std::size_t row0 = static_cast<std::size_t>(ty.i0) * a.width;
  const std::size_t row1 = static_cast<std::size_t>(ty.i1) * a.width;
  const float v00 = window_rn(LoadHu(p + row0 + tx.i0), a.lo, a.hi, l.range);
  const float v01 = window_rn(LoadHu(p + row0 + tx.i1), a.lo, a.hi, l.range);
  const float v10 = window_rn(LoadHu(p + row1 + tx.i0), a.lo, a.hi, l.range);
  const float v11 = window_rn(LoadHu(p + row1 + tx.i1), a.lo, a.hi, l.range);
  return bilerp_rn(v00, v01, v10, v11, ty, tx);
}

template <typename In, typename Out>
__global__ void PreprocessKernel(const In* __restrict__ volume, Out* __restrict__ out, Launch l) {
  const PreprocessArgs& a = l.args;
  const int x = blockIdx.x * kBlockX + threadIdx.x;
  const int y = blockIdx.y * kBlockY + threadIdx.y;
  if (x >= a.out_width || y >= a.out_height) return;

  const LinearTap tx = forward_axis_tap(x, a.width, l.map_x);
  const LinearTap ty = forward_axis_tap(y, a.height, l.map_y);
  const std::size_t plane_out = static_cast<std::size_t>(a.out_height) * a.out_width;
  const std::size_t pixel_out = static_cast<std::size_t>(y) * a.out_width + x;
  const int half_k = a.context / 2;
  const int n_out = a.stop - a.start;

  for (int c0 = l.s_first + blockIdx.z * l.chunk; c0 <= l.s_last; c0 += gridDim.z * l.chunk) {
    const int c1 = min(c0 + l.chunk - 1, l.s_last);
    float prev = 0.0f;  // value of slice prev_s
    int prev_s = -1;
    for (int s = c0; s <= c1; ++s) {
      float cur = 0.0f;
      bool have_cur = false;
      for (int j = 0; j < a.context; ++j) {
        const int offset = j - half_k;
        const float r = static_cast<float>(s - a.start) - static_cast<float>(offset) * a.slice_step;
        const int ic = static_cast<int>(floorf(r));
        const int i_lo = s == 0 ? 0 : max(ic - 1, 0);
        const int i_hi = s == a.depth - 1 ? n_out - 1 : min(ic + 1, n_out - 1);
        for (int i = i_lo; i <= i_hi; ++i) {
          const SliceTap t = slice_tap(a.start + i, offset, a.slice_step, a.depth);
          const bool blend = t.w1 > 0.0f;
          if ((blend ? t.z0 + 1 : t.z0) != s) continue;  // another slice completes (i, j)
          if (!have_cur) {
            cur = Sample(volume, l, s, ty, tx);
            have_cur = true;
          }
          float v = cur;
          if (blend) {
            if (prev_s != s - 1) {
              prev = Sample(volume, l, s - 1, ty, tx);
              prev_s = s - 1;
            }
            v = lerp_rn(prev, cur, sub_rn(1.0f, t.w1), t.w1);
          }
          Store(out + (static_cast<std::size_t>(i) * a.context + j) * plane_out + pixel_out, v);
        }
      }
      if (have_cur) {
        prev = cur;
        prev_s = s;
      }
    }
  }
}

template <typename In, typename Out>
void LaunchTyped(const void* volume, void* out, const Launch& l, cudaStream_t stream) {
  const PreprocessArgs& a = l.args;
  const int n_chunks = (l.s_last - l.s_first + l.chunk) / l.chunk;
  const dim3 block(kBlockX, kBlockY, 1);
  const dim3 grid((a.out_width + kBlockX - 1) / kBlockX, (a.out_height + kBlockY - 1) / kBlockY,
                  n_chunks < kMaxGridZ ? n_chunks : kMaxGridZ);
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
  l.map_y = axis_map(args.height, args.out_height, args.step_y, args.origin_y);
  l.map_x = axis_map(args.width, args.out_width, args.step_x, args.origin_x);
  PreprocessSliceRange(args, &l.s_first, &l.s_last);
  l.chunk = kChunk;
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
