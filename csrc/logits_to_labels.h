// logits_to_labels: network logits (N, C, h, w) -> labels uint8 (N, H, W).
//
// Contract (resunet_trt.kernels.logits_to_labels): each class plane is resized to (H, W) with the
// bilinear rule of common/bilinear.h, then the label is the argmax over C. Per axis the resize is
// either the torch mapping (step 0: torch interpolate, align_corners=False) or the inverse of the
// general mapping preprocess used for the volume (same step and origin): label row Y samples logit
// row (Y + 0.5 - origin_y) / step_y - 0.5, clamped to [0, h - 1]. Same for X. Both steps are
// fused per output pixel: the C resized values live in registers, no full-resolution float tensor is
// ever made.
//
// Argmax order follows numpy/torch: the first maximum wins (ties -> lowest class) and NaN counts as
// larger than any number (the first NaN wins). Logits are not checked for NaN (that would need a
// synchronising read-back on the GPU); a NaN logit therefore gives its class wherever it reaches.
#pragma once

#include <cstdint>

#include "common/macros.h"

#if defined(RESUNET_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace resunet {

enum class LogitsType { kFloat32, kFloat16 };

struct LogitsToLabelsArgs {
  int batch = 0;     // N
  int classes = 0;   // C, 1..256
  int height = 0;    // h
  int width = 0;     // w
  int out_height = 0;  // H
  int out_width = 0;   // W
  float step_y = 0.0f;    // preprocess's input rows per network row; 0: the torch mapping (scale h / H)
  float step_x = 0.0f;    // the same for columns
  float origin_y = 0.0f;  // general mapping only (must be 0 with step 0)
  float origin_x = 0.0f;
};

// One argmax step: does `value` (class c) beat the best so far? NaN beats numbers, earlier wins ties.
RESUNET_HD bool argmax_takes(float value, float best) {
  return value > best || (value != value && best == best);
}

// Throws std::invalid_argument when the arguments break the contract above.
void CheckLogitsToLabelsArgs(const LogitsToLabelsArgs& args);

// logits: N*C*h*w elements of `logits_type`; labels: N*H*W bytes.
void LogitsToLabelsCpu(const void* logits, LogitsType logits_type, std::uint8_t* labels,
                       const LogitsToLabelsArgs& args);

#if defined(RESUNET_WITH_CUDA)
// Device pointers; enqueued on `stream`, never synchronises.
void LogitsToLabelsCuda(const void* logits, LogitsType logits_type, std::uint8_t* labels,
                        const LogitsToLabelsArgs& args, cudaStream_t stream);
#endif

}  // namespace resunet
