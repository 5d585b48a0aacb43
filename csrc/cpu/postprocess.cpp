// postprocess and lesion_stats on the CPU, built on the run labelling of connected_components.cpp.
//
// Everything is computed per run, not per voxel: component sizes are sums of run lengths, and the tumor pass
// only reads the rows that hold a run of the kept liver component. The output is written once, row by row:
// zeros, then the runs of the kept component as liver, then its large tumor runs as tumor.
#include "postprocess.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace resunet {

void CheckMinLesionVoxels(int64_t min_lesion_voxels) {
  if (min_lesion_voxels < 0) {
    throw std::invalid_argument("min_lesion_voxels must be >= 0, got " + std::to_string(min_lesion_voxels));
  }
}

namespace {

void CheckLabelValues(const RunLabeling& lab) {
  if (lab.max_value > 2) {
    throw std::invalid_argument("labels must hold only 0 (background), 1 (liver) and 2 (tumor), found value " +
                                std::to_string(static_cast<int>(lab.max_value)));
  }
}

// Voxels per component id (index 0 unused).
std::vector<int64_t> ComponentSizes(const RunLabeling& lab) {
  std::vector<int64_t> size(static_cast<size_t>(lab.count + 1), 0);
  for (size_t i = 0; i < lab.runs.size(); ++i) size[lab.label[i]] += lab.runs[i].end - lab.runs[i].begin;
  return size;
}

}  // namespace

void PostprocessCpu(const uint8_t* labels, const VolumeShape& shape, int64_t min_lesion_voxels, int connectivity,
                    uint8_t* out) {
  CheckMinLesionVoxels(min_lesion_voxels);
  const RunLabeling fg = LabelRunsCpu(labels, shape, Foreground::kNonZero, connectivity);
  CheckLabelValues(fg);
  const int64_t n_rows = shape.rows(), W = shape.width;
  const bool parallel = shape.voxels() >= kParallelMinVoxels;
  const int64_t chunk = std::max<int64_t>(1, shape.height);  // one slice per task
  if (fg.count == 0) {
    if (shape.voxels() > 0) std::memset(out, 0, static_cast<size_t>(shape.voxels()));
    return;
  }
  // Largest component; std::max_element keeps the first maximum, i.e. the lowest raster-order id on ties.
  const std::vector<int64_t> fg_size = ComponentSizes(fg);
  const int32_t keep = static_cast<int32_t>(std::max_element(fg_size.begin() + 1, fg_size.end()) - fg_size.begin());

  // Tumor components lie inside one foreground component each, so only rows of the kept one need reading.
  std::vector<uint8_t> rows_of_keep(static_cast<size_t>(n_rows), 0);
#pragma omp parallel for schedule(dynamic, chunk) if (parallel)
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t i = fg.row_start[r]; i < fg.row_start[r + 1]; ++i) {
      if (fg.label[i] == keep) {
        rows_of_keep[r] = 1;
        break;
      }
    }
  }
  const RunLabeling tumor = LabelRunsCpu(labels, shape, Foreground::kTumor, connectivity, &rows_of_keep);
  const std::vector<int64_t> tumor_size = ComponentSizes(tumor);

#pragma omp parallel for schedule(dynamic, chunk) if (parallel)
  for (int64_t r = 0; r < n_rows; ++r) {
    uint8_t* row = out + r * W;
    std::memset(row, 0, static_cast<size_t>(W));
    if (!rows_of_keep[r]) continue;
    for (int64_t i = fg.row_start[r]; i < fg.row_start[r + 1]; ++i) {
      if (fg.label[i] == keep) std::memset(row + fg.runs[i].begin, 1, fg.runs[i].end - fg.runs[i].begin);
    }
    // A tumor run sits inside one foreground run: it is in the kept component iff its first voxel is.
    for (int64_t i = tumor.row_start[r]; i < tumor.row_start[r + 1]; ++i) {
      const Run run = tumor.runs[i];
      if (tumor_size[tumor.label[i]] >= min_lesion_voxels && row[run.begin] == 1) {
        std::memset(row + run.begin, 2, run.end - run.begin);
      }
    }
  }
}

LesionStatsResult LesionStatsCpu(const uint8_t* labels, const VolumeShape& shape, int connectivity,
                                 int32_t* component_labels) {
  const RunLabeling tumor = LabelRunsCpu(labels, shape, Foreground::kTumor, connectivity);
  CheckLabelValues(tumor);
  WriteRunLabelsCpu(tumor, component_labels);

  LesionStatsResult res;
  const int64_t n = tumor.count;
  res.count = n;
  res.voxels.assign(static_cast<size_t>(n), 0);
  res.bbox.resize(static_cast<size_t>(6 * n));
  res.centroid.assign(static_cast<size_t>(3 * n), 0.0);
  for (int64_t c = 0; c < n; ++c) {
    int64_t* b = &res.bbox[6 * c];
    b[0] = shape.depth, b[1] = shape.height, b[2] = shape.width;
    b[3] = b[4] = b[5] = 0;
  }
  std::vector<int64_t> sums(static_cast<size_t>(3 * n), 0);
  const int64_t H = shape.height;
  for (int64_t r = 0; r < shape.rows(); ++r) {
    const int64_t d = r / H, h = r % H;
    for (int64_t i = tumor.row_start[r]; i < tumor.row_start[r + 1]; ++i) {
      const int64_t c = tumor.label[i] - 1;
      const int64_t w0 = tumor.runs[i].begin, w1 = tumor.runs[i].end, len = w1 - w0;
      res.voxels[c] += len;
      int64_t* b = &res.bbox[6 * c];
      b[0] = std::min(b[0], d), b[1] = std::min(b[1], h), b[2] = std::min(b[2], w0);
      b[3] = std::max(b[3], d + 1), b[4] = std::max(b[4], h + 1), b[5] = std::max(b[5], w1);
      sums[3 * c] += d * len;
      sums[3 * c + 1] += h * len;
      sums[3 * c + 2] += (w0 + w1 - 1) * len / 2;  // sum of w0 .. w1-1
    }
  }
  for (int64_t c = 0; c < n; ++c) {
    for (int k = 0; k < 3; ++k) {
      res.centroid[3 * c + k] = static_cast<double>(sums[3 * c + k]) / static_cast<double>(res.voxels[c]);
    }
  }
  return res;
}

}  // namespace resunet
