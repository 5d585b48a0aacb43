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
//
// Shortcut: most of a CT slice is one class far from any boundary. Each network pixel first gets its
// "sure winner", the class c that beats every other class there with room to spare (below). The
// bilinear sample is a rounded weighted sum with weights >= 0, and every rounding step is monotone,
// so where all (up to) four network pixels a label pixel mixes have the same sure winner c, the
// blended c is >= every blended other class, and > each lower class thanks to the margin: the exact
// argmax is c and the pixel is written without blending. Everything else (boundaries, near-ties, NaN,
// huge values) takes the exact path, so the labels are bit-identical to blending everywhere.
// The margin: c beats a lower class k at a network pixel only if l_c - l_k > 1e-4 * max(|l_c|, |l_k|)
// + 1e-30; the blend's rounding errors are below 1e-6 of the magnitudes blended, so after blending
// l_c stays strictly above l_k (a tie there would go to k). A higher class needs only l_c >= l_k (a
// tie goes to c anyway). Values of magnitude >= 1e30 (where a sum could overflow) are never sure.
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

// "No sure winner" in the winner map; class ids stop at 254 where the shortcut is used.
constexpr std::uint8_t kMixed = 255;

// The sure winner (see the file comment) of one network pixel whose C class values are v[c * stride].
template <int kClasses, typename In>
std::uint8_t SureWinner(const In* v, std::size_t stride, int classes) {
  const int C = kClasses > 0 ? kClasses : classes;
  float best = LoadLogit(v);
  int arg = 0;
  for (int c = 1; c < C; ++c) {
    const float x = LoadLogit(v + c * stride);
    if (argmax_takes(x, best)) {
      best = x;
      arg = c;
    }
  }
  if (!(std::fabs(best) < 1e30f)) return kMixed;  // also NaN
  for (int k = 0; k < C; ++k) {
    if (k == arg) continue;
    const float x = LoadLogit(v + k * stride);
    if (!(std::fabs(x) < 1e30f)) return kMixed;
    if (k < arg) {
      if (!(best - x > 1e-4f * std::max(std::fabs(best), std::fabs(x)) + 1e-30f)) return kMixed;
    } else if (!(best >= x)) {
      return kMixed;
    }
  }
  return static_cast<std::uint8_t>(arg);
}

// kClasses > 0: compile-time class count; 0: use a.classes.
template <int kClasses, typename In>
void Run(const In* logits, std::uint8_t* labels, const LogitsToLabelsArgs& a) {
  const int C = kClasses > 0 ? kClasses : a.classes;
  const int h = a.height, w = a.width, H = a.out_height, W = a.out_width;
  const std::size_t plane_in = static_cast<std::size_t>(h) * w;
  const bool shortcut = C >= 2 && C < kMixed;

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
  const std::int64_t n_in_rows = static_cast<std::int64_t>(a.batch) * h;
  // winner[(n * h + i) * w + j]: the sure winner of network pixel (n, i, j), or kMixed.
  std::vector<std::uint8_t> winner(shortcut ? static_cast<std::size_t>(n_in_rows) * w : 0);
#if defined(RESUNET_WITH_OPENMP)
#pragma omp parallel
#endif
  {
    if (shortcut) {
#if defined(RESUNET_WITH_OPENMP)
#pragma omp for schedule(static)
#endif
      for (std::int64_t r = 0; r < n_in_rows; ++r) {
        const std::int64_t n = r / h;
        const In* px = logits + static_cast<std::size_t>(n) * C * plane_in + static_cast<std::size_t>(r % h) * w;
        std::uint8_t* dst = winner.data() + static_cast<std::size_t>(r) * w;
        for (int x = 0; x < w; ++x) dst[x] = SureWinner<kClasses>(px + x, plane_in, C);
      }
    }
    // blend[c * w + x]: class c, input column x, already blended between rows y0 and y1.
    std::vector<float> blend(static_cast<std::size_t>(C) * w);
    // sure[x]: the sure winner shared by input column x of rows y0 and y1, or kMixed.
    std::vector<std::uint8_t> sure(shortcut ? w : 0);
#if defined(RESUNET_WITH_OPENMP)
#pragma omp for schedule(static)
#endif
    for (std::int64_t r = 0; r < n_rows; ++r) {
      const std::int64_t n = r / H;
      const int y = static_cast<int>(r % H);
      const LinearTap ty = row_taps[y];
      std::uint8_t* out = labels + static_cast<std::size_t>(r) * W;
      if (shortcut) {
        const std::uint8_t* w_row0 = winner.data() + (static_cast<std::size_t>(n) * h + ty.i0) * w;
        const std::uint8_t* w_row1 = winner.data() + (static_cast<std::size_t>(n) * h + ty.i1) * w;
        for (int x = 0; x < w; ++x) sure[x] = w_row0[x] == w_row1[x] ? w_row0[x] : kMixed;
        int unsure = 0;
        for (int x = 0; x < W; ++x) {
          const std::uint8_t s0 = sure[col_i0[x]], s1 = sure[col_i1[x]];
          const std::uint8_t v = s0 == s1 ? s0 : kMixed;
          out[x] = v;
          unsure += v == kMixed;
        }
        if (unsure == 0) continue;
      }
      for (int c = 0; c < C; ++c) {
        const In* plane = logits + (static_cast<std::size_t>(n) * C + c) * plane_in;
        const In* row0 = plane + static_cast<std::size_t>(ty.i0) * w;
        const In* row1 = plane + static_cast<std::size_t>(ty.i1) * w;
        float* dst = blend.data() + static_cast<std::size_t>(c) * w;
        for (int x = 0; x < w; ++x) dst[x] = lerp_rn(LoadLogit(row0 + x), LoadLogit(row1 + x), ty.w0, ty.w1);
      }

      const float* b = blend.data();
      const int* i0 = col_i0.data();
      const int* i1 = col_i1.data();
      const float* w0 = col_w0.data();
      const float* w1 = col_w1.data();
      for (int x = 0; x < W; ++x) {
        if (shortcut && out[x] != kMixed) continue;
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
