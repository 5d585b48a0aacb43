// CPU logits_to_labels: bilinear upsample fused with argmax, no full-resolution float tensor.
//
// The work unit is one output row (n, y). For each class c the two input rows y0, y1 of plane
// (n, c) are blended vertically into a w-long float buffer (contiguous, vectorisable; fp16 logits are
// converted here, once per value read). Then every output pixel gathers its two column neighbours
// from each class buffer and keeps the running argmax in registers, so the only full-resolution
// array ever written is the uint8 label map. Work per output row: C*w blends + W*C gathers, against
// C*W*H floats written and re-read by an interpolate-then-argmax pipeline.
//
// Classes are a template parameter for the common small counts (2, 3, 4) so the class loop unrolls
// and the running maximum stays in registers; other counts take the generic path.
#include "logits_to_labels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/bilinear.h"
#include "common/half.h"
#include "common/macros.h"

namespace resunet {

void CheckLogitsToLabelsArgs(const LogitsToLabelsArgs& a) {
  require(a.batch > 0 && a.height > 0 && a.width > 0, "logits must not be empty");
  require(a.classes >= 1 && a.classes <= 256, "logits must have 1..256 classes (labels are uint8)");
  require(a.out_height > 0 && a.out_width > 0, "out_size must be positive");
  require(std::isfinite(a.step_y) && std::isfinite(a.step_x) && a.step_y >= 0.0f && a.step_x >= 0.0f,
          "step must be finite and positive (0: the default mapping)");
  require(std::isfinite(a.origin_y) && std::isfinite(a.origin_x), "origin must be finite");
  require((a.step_y > 0.0f || a.origin_y == 0.0f) && (a.step_x > 0.0f || a.origin_x == 0.0f),
          "origin needs a step (an axis with step 0 has origin 0)");
}

namespace {

inline float LoadLogit(const float* p) { return *p; }
inline float LoadLogit(const std::uint16_t* p) { return half_to_float(*p); }

// kClasses > 0: compile-time class count; 0: use a.classes.
template <int kClasses, typename In>
void Run(const In* logits, std::uint8_t* labels, const LogitsToLabelsArgs& a) {
  const int C = kClasses > 0 ? kClasses : a.classes;
  const int h = a.height, w = a.width, H = a.out_height, W = a.out_width;
  const std::size_t plane_in = static_cast<std::size_t>(h) * w;

  const AxisMap map_y = axis_map(h, H, a.step_y, a.origin_y);
  const AxisMap map_x = axis_map(w, W, a.step_x, a.origin_x);
  std::vector<LinearTap> row_taps(H);
  for (int y = 0; y < H; ++y) row_taps[y] = inverse_axis_tap(y, h, map_y);
  // Column taps as separate arrays, so the pixel loop reads them with plain (vector) loads.
  std::vector<int> col_i0(W), col_i1(W);
  std::vector<float> col_w0(W), col_w1(W);
  for (int x = 0; x < W; ++x) {
    const LinearTap t = inverse_axis_tap(x, w, map_x);
    col_i0[x] = t.i0;
    col_i1[x] = t.i1;
    col_w0[x] = t.w0;
    col_w1[x] = t.w1;
  }

  const std::int64_t n_rows = static_cast<std::int64_t>(a.batch) * H;
#if defined(RESUNET_WITH_OPENMP)
#pragma omp parallel
#endif
  {
    // blend[c * w + x]: class c, input column x, already blended between rows y0 and y1.
    std::vector<float> blend(static_cast<std::size_t>(C) * w);
#if defined(RESUNET_WITH_OPENMP)
#pragma omp for schedule(static)
#endif
    for (std::int64_t r = 0; r < n_rows; ++r) {
      const std::int64_t n = r / H;
      const int y = static_cast<int>(r % H);
      const LinearTap ty = row_taps[y];
      for (int c = 0; c < C; ++c) {
        const In* plane = logits + (static_cast<std::size_t>(n) * C + c) * plane_in;
        const In* row0 = plane + static_cast<std::size_t>(ty.i0) * w;
        const In* row1 = plane + static_cast<std::size_t>(ty.i1) * w;
        float* dst = blend.data() + static_cast<std::size_t>(c) * w;
        for (int x = 0; x < w; ++x) dst[x] = lerp_rn(LoadLogit(row0 + x), LoadLogit(row1 + x), ty.w0, ty.w1);
      }

      std::uint8_t* out = labels + static_cast<std::size_t>(r) * W;
      const float* b = blend.data();
      const int* i0 = col_i0.data();
      const int* i1 = col_i1.data();
      const float* w0 = col_w0.data();
      const float* w1 = col_w1.data();
      for (int x = 0; x < W; ++x) {
        float best = lerp_rn(b[i0[x]], b[i1[x]], w0[x], w1[x]);
        int arg = 0;
        for (int c = 1; c < C; ++c) {
          const float* bc = b + static_cast<std::size_t>(c) * w;
          const float v = lerp_rn(bc[i0[x]], bc[i1[x]], w0[x], w1[x]);
          // Selects, not branches: on noisy logits the winner changes unpredictably from pixel to pixel.
          const bool take = argmax_takes(v, best);
          best = take ? v : best;
          arg = take ? c : arg;
        }
        out[x] = static_cast<std::uint8_t>(arg);
      }
    }
  }
}

template <typename In>
void Dispatch(const In* logits, std::uint8_t* labels, const LogitsToLabelsArgs& a) {
  switch (a.classes) {
    case 2:
      Run<2>(logits, labels, a);
      break;
    case 3:
      Run<3>(logits, labels, a);
      break;
    case 4:
      Run<4>(logits, labels, a);
      break;
    default:
      Run<0>(logits, labels, a);
  }
}

}  // namespace

void LogitsToLabelsCpu(const void* logits, LogitsType logits_type, std::uint8_t* labels,
                       const LogitsToLabelsArgs& args) {
  CheckLogitsToLabelsArgs(args);
  if (logits_type == LogitsType::kFloat32) {
    Dispatch(static_cast<const float*>(logits), labels, args);
  } else {
    Dispatch(static_cast<const std::uint16_t*>(logits), labels, args);
  }
}

}  // namespace resunet
