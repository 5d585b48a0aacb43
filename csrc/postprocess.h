// postprocess and lesion_stats: clean-up of a 0/1/2 label volume and per-lesion numbers.
//
// postprocess (uint8 (D, H, W) 0 background / 1 liver / 2 tumor -> uint8 (D, H, W))
//   1. foreground = label >= 1 (liver or tumor); its connected components are found with `connectivity`;
//      only the largest is kept (ties: the component whose first voxel comes first in raster order).
//      Every voxel outside it becomes 0, tumor included.
//   2. tumor components (label == 2, same connectivity) inside the kept component with fewer than
//      min_lesion_voxels voxels become liver (1).
//   An all-zero volume stays all zeros. Values above 2 are rejected (std::invalid_argument).
//
// lesion_stats (uint8 (D, H, W) 0/1/2 -> tumor components and per-component numbers)
//   Components of label == 2, numbered 1..count in raster order (as connected_components). Per component i
//   (row i-1): voxel count, bounding box (d0, h0, w0, d1, h1, w1) half-open, centroid (d, h, w) in voxel
//   coordinates = integer coordinate sums / voxel count in float64 (the same formula on both devices).
//
// CUDA versions run on the caller's stream. postprocess synchronises once at the end to report invalid
// values; lesion_stats synchronises once to bring the component count back (array sizes depend on it).
#pragma once

#include <cstdint>
#include <vector>

#include "connected_components.h"

namespace resunet {

// Throws std::invalid_argument unless min_lesion_voxels >= 0.
void CheckMinLesionVoxels(int64_t min_lesion_voxels);

void PostprocessCpu(const uint8_t* labels, const VolumeShape& shape, int64_t min_lesion_voxels, int connectivity,
                    uint8_t* out);

struct LesionStatsResult {
  int64_t count = 0;
  std::vector<int64_t> voxels;    // (count,)
  std::vector<int64_t> bbox;      // (count, 6): d0, h0, w0, d1, h1, w1
  std::vector<double> centroid;   // (count, 3): d, h, w
};

// Fills component_labels (int32 (D, H, W)) and returns the per-component numbers.
LesionStatsResult LesionStatsCpu(const uint8_t* labels, const VolumeShape& shape, int connectivity,
                                 int32_t* component_labels);

#if defined(RESUNET_WITH_CUDA)
// `workspace` holds 2 * D*H*W int32 (nullptr: allocated here with cudaMallocAsync).
void PostprocessCuda(const uint8_t* labels, const VolumeShape& shape, int64_t min_lesion_voxels, int connectivity,
                     uint8_t* out, int32_t* workspace, cudaStream_t stream);

// Per-component numbers from a raster-ordered component label volume (device pointers, arrays of `count`
// rows). No synchronisation.
void ComponentStatsCuda(const int32_t* component_labels, const VolumeShape& shape, int64_t count, int64_t* voxels,
                        int64_t* bbox, double* centroid, cudaStream_t stream);
#endif

}  // namespace resunet
