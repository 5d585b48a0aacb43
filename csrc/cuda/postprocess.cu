// postprocess and lesion_stats on the GPU, built on LabelRootsCuda (connected_components.cu), which leaves the
// root index of every voxel's component in an int32 array.
//
// postprocess: component sizes by a warp-aggregated atomicAdd histogram indexed by root (lanes holding the
// same root add once, so a large liver does not serialise on one address); the largest component by one
// 64-bit atomicMax over (size, INT32_MAX - root), which also picks the smallest root (first in raster order)
// on ties; then the kept component is copied, its tumor labelled and small tumor components turned to liver.
// All on the caller's stream; one synchronisation at the end reports invalid label values.
//
// lesion stats: the voxel that starts a run along W walks its run and does the atomics for the whole run
// (integer sums, so both devices compute the centroid from the same numbers).
#include <limits>
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "postprocess.h"

namespace resunet {
namespace {

constexpr int kThreads = 256;

unsigned BlocksFor(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void ComponentSizeKernel(const int32_t* __restrict__ root_of, int32_t* size, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int32_t root = i < n ? root_of[i] : -1;
  const unsigned peers = __match_any_sync(0xffffffffu, root);  // every lane of the warp gets here
  if (root < 0) return;
  if (static_cast<int>(threadIdx.x & 31u) == __ffs(peers) - 1) atomicAdd(size + root, __popc(peers));
}

__global__ void LargestKernel(const int32_t* __restrict__ root_of, const int32_t* __restrict__ size, int64_t n,
                              unsigned long long* best) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n || root_of[i] != i) return;
  const unsigned long long key = (static_cast<unsigned long long>(size[i]) << 32) |
                                 static_cast<unsigned>(std::numeric_limits<int32_t>::max() - static_cast<int32_t>(i));
  atomicMax(best, key);
}

// out = labels inside the kept component, 0 elsewhere (key 0: no foreground at all).
__global__ void KeepKernel(const uint8_t* __restrict__ labels, const int32_t* __restrict__ root_of,
                           const unsigned long long* best, uint8_t* __restrict__ out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const unsigned long long key = *best;
  const int32_t keep =
      key == 0ull ? -2 : std::numeric_limits<int32_t>::max() - static_cast<int32_t>(key & 0xffffffffull);
  out[i] = root_of[i] == keep ? labels[i] : uint8_t{0};
}

__global__ void DropSmallTumorKernel(const int32_t* __restrict__ root_of, const int32_t* __restrict__ size,
                                     int64_t min_voxels, uint8_t* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t root = root_of[i];
  if (root >= 0 && static_cast<int64_t>(size[root]) < min_voxels) out[i] = 1;
}

__global__ void InitStatsKernel(int64_t* bbox, int64_t count, int depth, int height, int width) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= count) return;
  int64_t* b = bbox + 6 * c;
  b[0] = depth, b[1] = height, b[2] = width;
  b[3] = 0, b[4] = 0, b[5] = 0;
}

__global__ void RunStatsKernel(const int32_t* __restrict__ comp, int depth, int height, int width, int64_t* voxels,
                               int64_t* bbox, int64_t* sums) {
  const int64_t n = static_cast<int64_t>(depth) * height * width;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t c = comp[i];
  const int w0 = static_cast<int>(i % width);
  if (c == 0 || (w0 > 0 && comp[i - 1] == c)) return;  // only the first voxel of a run works
  int w1 = w0 + 1;
  while (w1 < width && comp[i + (w1 - w0)] == c) ++w1;
  const int64_t r = i / width;
  const long long h = r % height, d = r / height, len = w1 - w0;
  const int64_t k = c - 1;
  auto* b = reinterpret_cast<long long*>(bbox + 6 * k);
  auto* s = reinterpret_cast<unsigned long long*>(sums + 3 * k);
  atomicAdd(reinterpret_cast<unsigned long long*>(voxels + k), static_cast<unsigned long long>(len));
  atomicMin(b + 0, d);
  atomicMin(b + 1, h);
  atomicMin(b + 2, static_cast<long long>(w0));
  atomicMax(b + 3, d + 1);
  atomicMax(b + 4, h + 1);
  atomicMax(b + 5, static_cast<long long>(w1));
  atomicAdd(s + 0, static_cast<unsigned long long>(d * len));
  atomicAdd(s + 1, static_cast<unsigned long long>(h * len));
  atomicAdd(s + 2, static_cast<unsigned long long>((w0 + w1 - 1) * len / 2));  // w0 + ... + (w1 - 1)
}

__global__ void CentroidKernel(const int64_t* __restrict__ sums, const int64_t* __restrict__ voxels,
                               double* centroid, int64_t count) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= 3 * count) return;
  centroid[j] = static_cast<double>(sums[j]) / static_cast<double>(voxels[j / 3]);
}

}  // namespace

void PostprocessCuda(const uint8_t* labels, const VolumeShape& shape, int64_t min_lesion_voxels, int connectivity,
                     uint8_t* out, int32_t* workspace, cudaStream_t stream) {
  CheckConnectivity(connectivity);
  CheckMinLesionVoxels(min_lesion_voxels);
  CheckCudaVolumeSize(shape);
  const int64_t n = shape.voxels();
  if (n == 0) return;
  DeviceBuffer<int32_t> own(workspace == nullptr ? 2 * n : 0, stream);
  int32_t* const root_of = workspace != nullptr ? workspace : own.get();
  int32_t* const size = root_of + n;
  DeviceBuffer<unsigned long long> best(1, stream);
  DeviceBuffer<int32_t> bad_value(1, stream);
  RESUNET_CUDA_CHECK(cudaMemsetAsync(best.get(), 0, sizeof(unsigned long long), stream));
  RESUNET_CUDA_CHECK(cudaMemsetAsync(bad_value.get(), 0, sizeof(int32_t), stream));
  RESUNET_CUDA_CHECK(cudaMemsetAsync(size, 0, sizeof(int32_t) * n, stream));

  // 1. liver ∪ tumor: keep the largest component.
  LabelRootsCuda(labels, shape, Foreground::kNonZero, connectivity, root_of, bad_value.get(), 2, stream);
  ComponentSizeKernel<<<BlocksFor(n), kThreads, 0, stream>>>(root_of, size, n);
  RESUNET_CUDA_CHECK_LAUNCH();
  LargestKernel<<<BlocksFor(n), kThreads, 0, stream>>>(root_of, size, n, best.get());
  RESUNET_CUDA_CHECK_LAUNCH();
  KeepKernel<<<BlocksFor(n), kThreads, 0, stream>>>(labels, root_of, best.get(), out, n);
  RESUNET_CUDA_CHECK_LAUNCH();

  // 2. tumor inside it: small components become liver.
  LabelRootsCuda(out, shape, Foreground::kTumor, connectivity, root_of, bad_value.get(), -1, stream);
  RESUNET_CUDA_CHECK(cudaMemsetAsync(size, 0, sizeof(int32_t) * n, stream));
  ComponentSizeKernel<<<BlocksFor(n), kThreads, 0, stream>>>(root_of, size, n);
  RESUNET_CUDA_CHECK_LAUNCH();
  DropSmallTumorKernel<<<BlocksFor(n), kThreads, 0, stream>>>(root_of, size, min_lesion_voxels, out, n);
  RESUNET_CUDA_CHECK_LAUNCH();

  int32_t host_bad = 0;
  RESUNET_CUDA_CHECK(cudaMemcpyAsync(&host_bad, bad_value.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  RESUNET_CUDA_CHECK(cudaStreamSynchronize(stream));  // the one synchronisation: report invalid values
  if (host_bad != 0) {
    throw std::invalid_argument("labels must hold only 0 (background), 1 (liver) and 2 (tumor), found value " +
                                std::to_string(host_bad));
  }
}

void ComponentStatsCuda(const int32_t* component_labels, const VolumeShape& shape, int64_t count, int64_t* voxels,
                        int64_t* bbox, double* centroid, cudaStream_t stream) {
  CheckCudaVolumeSize(shape);
  const int64_t n = shape.voxels();
  if (n == 0 || count <= 0) return;
  DeviceBuffer<int64_t> sums(3 * count, stream);
  RESUNET_CUDA_CHECK(cudaMemsetAsync(sums.get(), 0, sizeof(int64_t) * 3 * count, stream));
  RESUNET_CUDA_CHECK(cudaMemsetAsync(voxels, 0, sizeof(int64_t) * count, stream));
  const int D = static_cast<int>(shape.depth), H = static_cast<int>(shape.height), W = static_cast<int>(shape.width);
  InitStatsKernel<<<BlocksFor(count), kThreads, 0, stream>>>(bbox, count, D, H, W);
  RESUNET_CUDA_CHECK_LAUNCH();
  RunStatsKernel<<<BlocksFor(n), kThreads, 0, stream>>>(component_labels, D, H, W, voxels, bbox, sums.get());
  RESUNET_CUDA_CHECK_LAUNCH();
  CentroidKernel<<<BlocksFor(3 * count), kThreads, 0, stream>>>(sums.get(), voxels, centroid, count);
  RESUNET_CUDA_CHECK_LAUNCH();
}

}  // namespace resunet
