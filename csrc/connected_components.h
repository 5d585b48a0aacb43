// connected_components: label the connected foreground components of a 3-D volume.
//
// Contract
//   volume  uint8 (D, H, W), C-contiguous. Which voxels are foreground is a Foreground rule:
//           kNonZero (mask != 0; also "liver or tumor" for 0/1/2 labels) or kTumor (value == 2).
//   connectivity  6 (faces), 18 (faces + edges) or 26 (faces + edges + corners).
//   labels  int32 (D, H, W): 0 on background, components numbered 1..count in C-order raster order
//           of their first voxel. The numbering is unique, so CPU and CUDA give the same labels bit for bit
//           and the result equals cc3d's after a raster-order relabelling.
//
// Devices
//   ConnectedComponentsCpu   two-pass union-find over runs along W, OpenMP by slabs of slices.
//   ConnectedComponentsCuda  block-free label equivalence (union toward the minimum index with atomicMin),
//                            raster order by an inclusive scan over root flags. Runs on the caller's stream;
//                            returning the count to the host costs one cudaStreamSynchronize.
#pragma once

#include <cstdint>
#include <vector>

#if defined(RESUNET_WITH_CUDA)
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#endif

namespace resunet {

struct VolumeShape {
  int64_t depth = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t voxels() const { return depth * height * width; }
  int64_t rows() const { return depth * height; }
};

// Volumes smaller than this run on one thread: there a parallel region costs more than it saves, above all
// on a loaded machine where a descheduled thread stalls the others at every barrier.
constexpr int64_t kParallelMinVoxels = int64_t{1} << 22;

// Which voxel values count as foreground.
enum class Foreground : int { kNonZero = 0, kTumor = 1 };

// Throws std::invalid_argument unless connectivity is 6, 18 or 26.
void CheckConnectivity(int connectivity);

// ---- CPU building blocks, shared with postprocess -------------------------------------------------------

// One run of foreground voxels along W in one row (d, h): columns [begin, end).
struct Run {
  int32_t begin;
  int32_t end;
};

// Runs of a volume with their component ids.
struct RunLabeling {
  VolumeShape shape;
  std::vector<int64_t> row_start;  // D*H + 1 entries: the runs of row r are runs[row_start[r] .. row_start[r+1])
  std::vector<Run> runs;           // all runs, in raster order
  std::vector<int32_t> label;      // per run: component id 1..count
  int64_t count = 0;               // number of components
  uint8_t max_value = 0;           // largest voxel value seen in the rows that were scanned
};

// Labels the components of `volume` run by run. When `row_filter` is given (D*H entries), rows whose entry is
// 0 are treated as empty without being read (max_value then covers only the scanned rows).
RunLabeling LabelRunsCpu(const uint8_t* volume, const VolumeShape& shape, Foreground foreground, int connectivity,
                         const std::vector<uint8_t>* row_filter = nullptr);

// Writes the int32 label volume of a RunLabeling (every voxel written, background 0).
void WriteRunLabelsCpu(const RunLabeling& labeling, int32_t* labels);

// ---- Public ops -----------------------------------------------------------------------------------------

// Returns count; fills labels (D*H*W int32).
int64_t ConnectedComponentsCpu(const uint8_t* mask, const VolumeShape& shape, int connectivity, int32_t* labels);

#if defined(RESUNET_WITH_CUDA)
// ---- CUDA building blocks, shared with postprocess ------------------------------------------------------

// Owner of a stream-ordered device allocation (cudaMallocAsync / cudaFreeAsync on one stream).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer(int64_t count, cudaStream_t stream) : stream_(stream) {
    if (count <= 0) return;
    const cudaError_t status = cudaMallocAsync(reinterpret_cast<void**>(&ptr_), sizeof(T) * count, stream);
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("CUDA error in cudaMallocAsync: ") + cudaGetErrorString(status));
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

// Throws std::invalid_argument when the volume has too many voxels for int32 linear indices.
void CheckCudaVolumeSize(const VolumeShape& shape);

// Queues the labelling of `volume` on `stream`: afterwards label[i] (int32, D*H*W) is the linear index of the
// root of voxel i's component (its first voxel in raster order), or -1 on background. When check_max_label >= 0,
// any voxel value above it is stored in *max_flag (device int32, left as is when all values are valid).
void LabelRootsCuda(const uint8_t* volume, const VolumeShape& shape, Foreground foreground, int connectivity,
                    int32_t* label, int32_t* max_flag, int check_max_label, cudaStream_t stream);

// ---- Public ops (CUDA) ----------------------------------------------------------------------------------

// Device pointers. `workspace` holds D*H*W int32 (the caller's allocator caches it; nullptr: allocated here
// with cudaMallocAsync). When check_max_label >= 0, a voxel value above it makes the call throw
// std::invalid_argument (checked at the same synchronisation that brings the count back).
int64_t ConnectedComponentsCuda(const uint8_t* volume, const VolumeShape& shape, Foreground foreground,
                                int connectivity, int32_t* labels, int32_t* workspace, cudaStream_t stream,
                                int check_max_label = -1);
#endif

}  // namespace resunet
