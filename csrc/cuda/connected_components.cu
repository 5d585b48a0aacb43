// Connected components on the GPU: label equivalence with union-find on the label array itself.
//
//   1. InitRunsKernel   one warp per row (d, h): a ballot over 32 voxels gives the foreground bits, and every
//                       foreground voxel is labelled with the linear index of the first voxel of its run along
//                       W (background: -1). Runs are thereby already merged, like the run-based CPU pass.
//   2. MergeKernel      one thread per voxel looks at the already-visited neighbour rows (2 rows for 6-, 4 for
//                       18- and 26-connectivity) and unites its run with the neighbour runs it touches. Only
//                       the voxel where a new neighbour run starts does the union, so each touching pair of
//                       runs is united about once. Union links the larger root under the smaller with
//                       atomicMin (Playne & Hawick 2018; Allegretti et al. 2020): the root of a component ends
//                       up at its smallest linear index, i.e. its first voxel in raster order.
//   3. Raster numbering an inclusive scan (CUB) over "is a root" flags gives each root its rank = component id;
//                       the count is the last element of the scan.
//   4. FinalizeKernel   every foreground voxel takes the id of its root.
// Everything is queued on the caller's stream with stream-ordered allocations; the only synchronisation is
// the one that brings the count (and the invalid-value flag) back to the host.
#include <cub/device/device_scan.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <limits>
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "connected_components.h"

namespace resunet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

template <Foreground F>
__device__ __forceinline__ bool IsForeground(unsigned v) {
  return F == Foreground::kNonZero ? v != 0u : v == 2u;
}

// Root of x. Loads bypass L1 (__ldcg): other blocks relink roots concurrently and L1 is not coherent.
__device__ __forceinline__ int32_t FindRoot(const int32_t* label, int32_t x) {
  int32_t p = __ldcg(label + x);
  while (p != x) {
    x = p;
    p = __ldcg(label + x);
  }
  return x;
}

// Unites the trees of a and b, linking the larger root under the smaller one. If another thread relinked
// the root first, atomicMin returns its new parent and the loop goes on from there.
__device__ void Unite(int32_t* label, int32_t a, int32_t b) {
  a = FindRoot(label, a);
  b = FindRoot(label, b);
  while (a != b) {
    if (a < b) {
      const int32_t t = a;
      a = b;
      b = t;
    }
    const int32_t old = atomicMin(label + a, b);
    if (old == a) return;
    a = FindRoot(label, old);
    b = FindRoot(label, b);
  }
}

// One warp per row; label = linear index of the first voxel of the voxel's run along W, -1 on background.
template <Foreground F>
__global__ void InitRunsKernel(const uint8_t* __restrict__ volume, int64_t rows, int32_t width,
                               int32_t* __restrict__ label, int32_t* max_flag, int check_max_label) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const unsigned lane = threadIdx.x & 31u;
  if (row >= rows) return;  // all 32 lanes of a warp share the row, so whole warps leave together
  const int64_t offset = row * width;
  int32_t carry = -1;  // first column of a run still open at the end of the previous 32 columns
  unsigned vmax = 0;
  for (int32_t base = 0; base < width; base += 32) {
    const int32_t w = base + static_cast<int32_t>(lane);
    const unsigned v = w < width ? volume[offset + w] : 0u;
    vmax = max(vmax, v);
    const bool fg = IsForeground<F>(v);
    const unsigned bits = __ballot_sync(0xffffffffu, fg);
    // First column of the run through lane L: just after the last background lane below L, else the open run.
    auto run_start = [&](unsigned L) -> int32_t {
      const unsigned bg_below = ~bits & ((1u << L) - 1u);
      if (bg_below != 0u) return base + 32 - __clz(bg_below);
      return carry >= 0 ? carry : base;
    };
    if (w < width) label[offset + w] = fg ? static_cast<int32_t>(offset + run_start(lane)) : -1;
    carry = (bits >> 31) != 0u ? run_start(31) : -1;
  }
  if (check_max_label >= 0 && vmax > static_cast<unsigned>(check_max_label)) {
    atomicMax(max_flag, static_cast<int32_t>(vmax));
  }
}

struct NeighbourRow {
  int dd;
  int dh;
  int widen;  // 1 when the neighbour may sit one column to either side
};

// Unites each run with the runs it touches in the already-visited rows (see the CPU file for the rows).
template <int Connectivity>
__global__ void MergeKernel(int32_t* label, int depth, int height, int width) {
  const int64_t n = static_cast<int64_t>(depth) * height * width;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n || label[i] < 0) return;  // foreground labels stay >= 0 under atomicMin, background stays -1
  const int w = static_cast<int>(i % width);
  const int64_t r = i / width;
  const int h = static_cast<int>(r % height);
  const int d = static_cast<int>(r / height);
  const bool run_start = w == 0 || label[i - 1] < 0;

  constexpr int kRows = Connectivity == 6 ? 2 : 4;
  constexpr NeighbourRow kNbrs6[2] = {{0, -1, 0}, {-1, 0, 0}};
  constexpr NeighbourRow kNbrs18[4] = {{0, -1, 1}, {-1, 0, 1}, {-1, -1, 0}, {-1, 1, 0}};
  constexpr NeighbourRow kNbrs26[4] = {{0, -1, 1}, {-1, -1, 1}, {-1, 0, 1}, {-1, 1, 1}};
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    const NeighbourRow nb = Connectivity == 6 ? kNbrs6[q] : (Connectivity == 18 ? kNbrs18[q] : kNbrs26[q]);
    const int nd = d + nb.dd, nh = h + nb.dh;
    if (nd < 0 || nh < 0 || nh >= height) continue;
    const int64_t nbase = (static_cast<int64_t>(nd) * height + nh) * width;
    auto fg = [&](int k) { return k >= 0 && k < width && label[nbase + k] >= 0; };
    const int32_t self = static_cast<int32_t>(i);
    // Only the voxel where contact with a new neighbour run begins unites, so each pair is united ~once.
    if (nb.widen == 0) {
      if (fg(w) && (run_start || !fg(w - 1))) Unite(label, self, static_cast<int32_t>(nbase + w));
    } else {
      const bool left = fg(w - 1), centre = fg(w), right = fg(w + 1);
      if (right && !centre) Unite(label, self, static_cast<int32_t>(nbase + w + 1));
      if (run_start) {
        if (left) Unite(label, self, static_cast<int32_t>(nbase + w - 1));
        if (centre && !left) Unite(label, self, static_cast<int32_t>(nbase + w));
      }
    }
  }
}

// label[i] = root of i (path compression; concurrent writes only ever store the root).
__global__ void CompressKernel(int32_t* label, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t l = label[i];
  if (l < 0 || l == i) return;
  label[i] = FindRoot(label, l);
}

struct IsRoot {
  const int32_t* label;
  __host__ __device__ int32_t operator()(int32_t i) const { return label[i] == i ? 1 : 0; }
};

// out holds the inclusive scan of the root flags, so out[root] is the root's raster rank = its component id.
// A root's entry is rewritten with the value it already has, and other entries are read by nobody.
__global__ void FinalizeKernel(const int32_t* __restrict__ label, int32_t* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t root = label[i];
  out[i] = root < 0 ? 0 : out[root];
}

unsigned BlocksFor(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void CheckCudaVolumeSize(const VolumeShape& shape) {
  // Labels double as int32 linear indices, and the scan counts with int.
  if (shape.voxels() >= static_cast<int64_t>(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument("CUDA connected components need fewer than 2^31 - 1 voxels, got " +
                                std::to_string(shape.voxels()));
  }
}

void LabelRootsCuda(const uint8_t* volume, const VolumeShape& shape, Foreground foreground, int connectivity,
                    int32_t* label, int32_t* max_flag, int check_max_label, cudaStream_t stream) {
  CheckConnectivity(connectivity);
  CheckCudaVolumeSize(shape);
  const int64_t n = shape.voxels();
  if (n == 0) return;
  const int64_t rows = shape.rows();
  const int32_t W = static_cast<int32_t>(shape.width);
  const unsigned row_blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (foreground == Foreground::kNonZero) {
    InitRunsKernel<Foreground::kNonZero><<<row_blocks, kThreads, 0, stream>>>(volume, rows, W, label, max_flag,
                                                                              check_max_label);
  } else {
    InitRunsKernel<Foreground::kTumor><<<row_blocks, kThreads, 0, stream>>>(volume, rows, W, label, max_flag,
                                                                            check_max_label);
  }
  RESUNET_CUDA_CHECK_LAUNCH();
  const int D = static_cast<int>(shape.depth), H = static_cast<int>(shape.height);
  if (connectivity == 6) {
    MergeKernel<6><<<BlocksFor(n), kThreads, 0, stream>>>(label, D, H, W);
  } else if (connectivity == 18) {
    MergeKernel<18><<<BlocksFor(n), kThreads, 0, stream>>>(label, D, H, W);
  } else {
    MergeKernel<26><<<BlocksFor(n), kThreads, 0, stream>>>(label, D, H, W);
  }
  RESUNET_CUDA_CHECK_LAUNCH();
  CompressKernel<<<BlocksFor(n), kThreads, 0, stream>>>(label, n);
  RESUNET_CUDA_CHECK_LAUNCH();
}

int64_t ConnectedComponentsCuda(const uint8_t* volume, const VolumeShape& shape, Foreground foreground,
                                int connectivity, int32_t* labels, int32_t* workspace, cudaStream_t stream,
                                int check_max_label) {
  CheckConnectivity(connectivity);
  CheckCudaVolumeSize(shape);
  const int64_t n = shape.voxels();
  if (n == 0) return 0;

  // scratch[0]: component count, scratch[1]: largest invalid value seen (0 = none).
  DeviceBuffer<int32_t> scratch(2, stream);
  DeviceBuffer<int32_t> own_label(workspace == nullptr ? n : 0, stream);
  int32_t* label = workspace != nullptr ? workspace : own_label.get();
  RESUNET_CUDA_CHECK(cudaMemsetAsync(scratch.get(), 0, 2 * sizeof(int32_t), stream));
  LabelRootsCuda(volume, shape, foreground, connectivity, label, scratch.get() + 1, check_max_label, stream);

  auto flags = thrust::make_transform_iterator(thrust::counting_iterator<int32_t>(0), IsRoot{label});
  size_t temp_bytes = 0;
  RESUNET_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, flags, labels, static_cast<int>(n), stream));
  {
    DeviceBuffer<unsigned char> temp(static_cast<int64_t>(temp_bytes), stream);
    RESUNET_CUDA_CHECK(
        cub::DeviceScan::InclusiveSum(temp.get(), temp_bytes, flags, labels, static_cast<int>(n), stream));
  }
  RESUNET_CUDA_CHECK(
      cudaMemcpyAsync(scratch.get(), labels + (n - 1), sizeof(int32_t), cudaMemcpyDeviceToDevice, stream));
  FinalizeKernel<<<BlocksFor(n), kThreads, 0, stream>>>(label, labels, n);
  RESUNET_CUDA_CHECK_LAUNCH();

  int32_t host[2] = {0, 0};
  RESUNET_CUDA_CHECK(cudaMemcpyAsync(host, scratch.get(), sizeof(host), cudaMemcpyDeviceToHost, stream));
  RESUNET_CUDA_CHECK(cudaStreamSynchronize(stream));  // the one synchronisation: the count is needed on the host
  if (host[1] != 0) {
    throw std::invalid_argument("labels must hold only 0 (background), 1 (liver) and 2 (tumor), found value " +
                                std::to_string(host[1]));
  }
  return host[0];
}

}  // namespace resunet
