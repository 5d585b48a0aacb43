// CUDA logits_to_labels: bilinear upsample fused with argmax, one thread per output pixel.
//
// Each thread computes its row/column taps (common/bilinear.h: the torch mapping, or the inverse of
// preprocess's general mapping, per axis), then for every class reads the 2x2
// input neighbourhood, blends it with the same float operations as the CPU kernel and keeps the
// running argmax in registers; only the uint8 label is stored. Neighbouring threads share input
// values, which L1 serves, so DRAM traffic is one read of the logits and one byte per output pixel.
// Blocks are 32 x 8 pixels of one image; images run along grid z.
#include <cuda_fp16.h>

#include <cstdint>

#include "common/bilinear.h"
#include "common/cuda_check.h"
#include "logits_to_labels.h"

namespace resunet {
namespace {

constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr int kMaxGridZ = 65535;

__device__ __forceinline__ float LoadLogit(const float* p) { return __ldg(p); }
__device__ __forceinline__ float LoadLogit(const __half* p) { return __half2float(__ldg(p)); }

template <typename In>
__global__ void LogitsToLabelsKernel(const In* __restrict__ logits, std::uint8_t* __restrict__ labels,
                                     LogitsToLabelsArgs a, AxisMap map_y, AxisMap map_x) {
  const int x = blockIdx.x * kBlockX + threadIdx.x;
  const int y = blockIdx.y * kBlockY + threadIdx.y;
  if (x >= a.out_width || y >= a.out_height) return;

  const LinearTap tx = inverse_axis_tap(x, a.width, map_x);
  const LinearTap ty = inverse_axis_tap(y, a.height, map_y);
  const std::size_t plane_in = static_cast<std::size_t>(a.height) * a.width;
  const std::size_t o00 = static_cast<std::size_t>(ty.i0) * a.width + tx.i0;
  const std::size_t o01 = static_cast<std::size_t>(ty.i0) * a.width + tx.i1;
  const std::size_t o10 = static_cast<std::size_t>(ty.i1) * a.width + tx.i0;
  const std::size_t o11 = static_cast<std::size_t>(ty.i1) * a.width + tx.i1;
  const std::size_t plane_out = static_cast<std::size_t>(a.out_height) * a.out_width;

  for (int n = blockIdx.z; n < a.batch; n += gridDim.z) {
    const In* p = logits + static_cast<std::size_t>(n) * a.classes * plane_in;
    float best = bilerp_rn(LoadLogit(p + o00), LoadLogit(p + o01), LoadLogit(p + o10), LoadLogit(p + o11), ty, tx);
    int arg = 0;
    for (int c = 1; c < a.classes; ++c) {
      p += plane_in;
      const float v = bilerp_rn(LoadLogit(p + o00), LoadLogit(p + o01), LoadLogit(p + o10), LoadLogit(p + o11), ty, tx);
      if (argmax_takes(v, best)) {
        best = v;
        arg = c;
      }
    }
    labels[static_cast<std::size_t>(n) * plane_out + static_cast<std::size_t>(y) * a.out_width + x] =
        static_cast<std::uint8_t>(arg);
  }
}

template <typename In>
void LaunchTyped(const void* logits, std::uint8_t* labels, const LogitsToLabelsArgs& a, cudaStream_t stream) {
  const dim3 block(kBlockX, kBlockY, 1);
  const dim3 grid((a.out_width + kBlockX - 1) / kBlockX, (a.out_height + kBlockY - 1) / kBlockY,
                  a.batch < kMaxGridZ ? a.batch : kMaxGridZ);
  LogitsToLabelsKernel<In><<<grid, block, 0, stream>>>(
      static_cast<const In*>(logits), labels, a, axis_map(a.height, a.out_height, a.step_y, a.origin_y),
      axis_map(a.width, a.out_width, a.step_x, a.origin_x));
  RESUNET_CUDA_CHECK_LAUNCH();
}

}  // namespace

void LogitsToLabelsCuda(const void* logits, LogitsType logits_type, std::uint8_t* labels,
                        const LogitsToLabelsArgs& args, cudaStream_t stream) {
  CheckLogitsToLabelsArgs(args);
  require((args.out_height + kBlockY - 1) / kBlockY <= 65535, "out_size height is too large for the CUDA kernel");
  if (logits_type == LogitsType::kFloat32) {
    LaunchTyped<float>(logits, labels, args, stream);
  } else {
    LaunchTyped<__half>(logits, labels, args, stream);
  }
}

}  // namespace resunet
