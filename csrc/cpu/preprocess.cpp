// CPU preprocess: HU window + bilinear resample + 2.5D stacking in one pass over the input.
//
// The work unit is one output row y across the slab of input slices the call reads. For each input
// slice s that some output channel reads, the two input rows y0, y1 that row y needs are windowed and
// blended vertically into a W-long float buffer (a straight, vectorisable loop over contiguous
// memory), then each output column gathers two neighbours from that buffer; the finished row of slice
// s is kept (float, and converted to the output type once). Then every output (i, j) takes its row:
// a copy of slice z0's row when its context position z is integral (always, for slice_step = 1), else
// the blend (1 - f) * row(z0) + f * row(z0 + 1). The resize is linear, so blending resized rows is
// resizing blended slices, and each input row is read and resized once per call however large the
// context K or however fine the slice_step. Row, column and slice taps are computed once per call.
//
// OpenMP splits the output rows statically: a thread's rows are neighbours and share input rows in
// cache. Each thread keeps (slices read) x w floats of finished rows.
#include "preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>
#include <vector>

#include "common/bilinear.h"
#include "common/half.h"
#include "common/macros.h"

namespace resunet {

void CheckPreprocessArgs(const PreprocessArgs& a) {
  require(a.depth > 0 && a.height > 0 && a.width > 0, "volume must not be empty");
  require(a.out_height > 0 && a.out_width > 0, "out_size must be positive");
  require(a.context >= 1 && a.context % 2 == 1, "context must be an odd number >= 1");
  require(0 <= a.start && a.start < a.stop && a.stop <= a.depth, "start/stop must satisfy 0 <= start < stop <= D");
  require(std::isfinite(a.lo) && std::isfinite(a.hi) && a.lo < a.hi, "window must be finite with lo < hi");
  require(std::isfinite(a.step_y) && std::isfinite(a.step_x) && a.step_y >= 0.0f && a.step_x >= 0.0f,
          "step must be finite and positive (0: the default mapping)");
  require(std::isfinite(a.origin_y) && std::isfinite(a.origin_x), "origin must be finite");
  require((a.step_y > 0.0f || a.origin_y == 0.0f) && (a.step_x > 0.0f || a.origin_x == 0.0f),
          "origin needs a step (an axis with step 0 has origin 0)");
  require(std::isfinite(a.slice_step) && a.slice_step > 0.0f, "slice_step must be finite and > 0");
}

void PreprocessSliceRange(const PreprocessArgs& a, int* first, int* last) {
  // z(i, j) is non-decreasing in i and j (float addition and multiplication by a positive step are
  // monotone), so the extremes are the first channel of the first slice and the last of the last.
  const int half_k = a.context / 2;
  const SliceTap lo = slice_tap(a.start, -half_k, a.slice_step, a.depth);
  const SliceTap hi = slice_tap(a.stop - 1, a.context - 1 - half_k, a.slice_step, a.depth);
  *first = lo.z0;
  *last = hi.w1 > 0.0f ? hi.z0 + 1 : hi.z0;
}

namespace {

// Non-finite check for float rows: NaN and +-Inf are the floats whose exponent bits are all set.
// An integer OR-reduction, so it vectorises (a float sum would not, without -ffast-math).
bool RowFinite(const float* row, int width) {
  std::uint32_t bad = 0;
  for (int x = 0; x < width; ++x) {
    std::uint32_t bits;
    std::memcpy(&bits, row + x, sizeof bits);
    bad |= static_cast<std::uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

inline void StoreRow(float* dst, const float* src, int n) { std::memcpy(dst, src, sizeof(float) * n); }
inline void StoreRow(std::uint16_t* dst, const float* src, int n) {
  for (int x = 0; x < n; ++x) dst[x] = float_to_half_rn(src[x]);
}

template <typename In, typename Out>
void Run(const In* volume, Out* out, const PreprocessArgs& a) {
  const int D = a.depth, H = a.height, W = a.width, h = a.out_height, w = a.out_width, K = a.context;
  const int half_k = K / 2;
  const int n_out = a.stop - a.start;
  const float lo = a.lo, hi = a.hi, range = sub_rn(a.hi, a.lo);
  const std::size_t plane_in = static_cast<std::size_t>(H) * W;
  const std::size_t plane_out = static_cast<std::size_t>(h) * w;

  const AxisMap map_y = axis_map(H, h, a.step_y, a.origin_y);
  const AxisMap map_x = axis_map(W, w, a.step_x, a.origin_x);
  std::vector<LinearTap> row_taps(h);
  for (int y = 0; y < h; ++y) row_taps[y] = forward_axis_tap(y, H, map_y);
  // Column taps as separate arrays, so the column loop reads them with plain (vector) loads.
  std::vector<int> col_i0(w), col_i1(w);
  std::vector<float> col_w0(w), col_w1(w);
  for (int x = 0; x < w; ++x) {
    const LinearTap t = forward_axis_tap(x, W, map_x);
    col_i0[x] = t.i0;
    col_i1[x] = t.i1;
    col_w0[x] = t.w0;
    col_w1[x] = t.w1;
  }

  // Context taps of every output plane (i * K + j), and the input slices they read: slot[s - s_first]
  // is the slice's row in the per-thread buffers, -1 for a slice no output reads (slice_step > 1).
  int s_first = 0, s_last = 0;
  PreprocessSliceRange(a, &s_first, &s_last);
  const int span = s_last - s_first + 1;
  std::vector<SliceTap> z_taps(static_cast<std::size_t>(n_out) * K);
  std::vector<int> slot(span, -1);
  for (int i = 0; i < n_out; ++i) {
    for (int j = 0; j < K; ++j) {
      const SliceTap t = slice_tap(a.start + i, j - half_k, a.slice_step, D);
      z_taps[static_cast<std::size_t>(i) * K + j] = t;
      slot[t.z0 - s_first] = 0;
      if (t.w1 > 0.0f) slot[t.z0 + 1 - s_first] = 0;
    }
  }
  int n_read = 0;  // slices read
  for (int k = 0; k < span; ++k) {
    if (slot[k] == 0) slot[k] = n_read++;
  }

  // For float volumes, output row y checks the input rows after the previous rows' last tap up to its
  // own last tap (the last row: to the end), so every row of every slice in [s_first, s_last] is checked
  // exactly once, including rows a downsampling or cropping resample skips and slices between the ones
  // a coarse slice_step reads (as the CUDA path, which checks that slab before the launch).
  std::vector<int> check_begin(h), check_end(h);
  for (int y = 0; y < h; ++y) {
    check_begin[y] = y == 0 ? 0 : check_end[y - 1];
    check_end[y] = y == h - 1 ? H : std::max(check_begin[y], row_taps[y].i1 + 1);
  }

  int bad_slice = std::numeric_limits<int>::max();

#if defined(RESUNET_WITH_OPENMP)
#pragma omp parallel reduction(min : bad_slice)
#endif
  {
    std::vector<float> blend(W);
    std::vector<float> row_f(w);
    std::vector<float> rows_f(static_cast<std::size_t>(n_read) * w);  // finished rows, float
    // Finished rows in the output type (float output reuses rows_f).
    std::vector<Out> rows_out(std::is_same<Out, float>::value ? 0 : static_cast<std::size_t>(n_read) * w);
#if defined(RESUNET_WITH_OPENMP)
#pragma omp for schedule(static)
#endif
    for (int y = 0; y < h; ++y) {
      const LinearTap ty = row_taps[y];
      bool finite = true;
      for (int s = s_first; s <= s_last; ++s) {
        const In* plane = volume + static_cast<std::size_t>(s) * plane_in;
        if constexpr (std::is_same<In, float>::value) {
          for (int yy = check_begin[y]; finite && yy < check_end[y]; ++yy) {
            finite = RowFinite(plane + static_cast<std::size_t>(yy) * W, W);
          }
          if (!finite) {
            bad_slice = std::min(bad_slice, s);
            break;  // the call throws after the loop; this row's output is never seen
          }
        }
        const int k = slot[s - s_first];
        if (k < 0) continue;  // no output reads this slice
        const In* row0 = plane + static_cast<std::size_t>(ty.i0) * W;
        const In* row1 = plane + static_cast<std::size_t>(ty.i1) * W;
        for (int x = 0; x < W; ++x) {
          const float v0 = window_rn(static_cast<float>(row0[x]), lo, hi, range);
          const float v1 = window_rn(static_cast<float>(row1[x]), lo, hi, range);
          blend[x] = lerp_rn(v0, v1, ty.w0, ty.w1);
        }
        float* dst = rows_f.data() + static_cast<std::size_t>(k) * w;
        for (int x = 0; x < w; ++x) dst[x] = lerp_rn(blend[col_i0[x]], blend[col_i1[x]], col_w0[x], col_w1[x]);
        if constexpr (!std::is_same<Out, float>::value) {
          StoreRow(rows_out.data() + static_cast<std::size_t>(k) * w, dst, w);
        }
      }
      if (!finite) continue;

      const Out* done = std::is_same<Out, float>::value ? reinterpret_cast<const Out*>(rows_f.data())
                                                        : rows_out.data();
      for (std::size_t t = 0; t < z_taps.size(); ++t) {
        const SliceTap zt = z_taps[t];
        Out* dst = out + t * plane_out + static_cast<std::size_t>(y) * w;
        const int k0 = slot[zt.z0 - s_first];
        if (zt.w1 == 0.0f) {
          std::memcpy(dst, done + static_cast<std::size_t>(k0) * w, sizeof(Out) * w);
          continue;
        }
        const int k1 = slot[zt.z0 + 1 - s_first];
        const float* r0 = rows_f.data() + static_cast<std::size_t>(k0) * w;
        const float* r1 = rows_f.data() + static_cast<std::size_t>(k1) * w;
        const float w0 = sub_rn(1.0f, zt.w1), w1 = zt.w1;
        for (int x = 0; x < w; ++x) row_f[x] = lerp_rn(r0[x], r1[x], w0, w1);
        StoreRow(dst, row_f.data(), w);
      }
    }
  }

  if (bad_slice != std::numeric_limits<int>::max()) {
    std::ostringstream msg;
    msg << "volume must be finite HU, got NaN or Inf in slice " << bad_slice;
    throw std::invalid_argument(msg.str());
  }
}

}  // namespace

void PreprocessCpu(const void* volume, VolumeType volume_type, void* out, PlaneType plane_type,
                   const PreprocessArgs& args) {
  CheckPreprocessArgs(args);
  if (volume_type == VolumeType::kInt16) {
    const auto* in = static_cast<const std::int16_t*>(volume);
    if (plane_type == PlaneType::kFloat32) {
      Run(in, static_cast<float*>(out), args);
    } else {
      Run(in, static_cast<std::uint16_t*>(out), args);
    }
  } else {
    const auto* in = static_cast<const float*>(volume);
    if (plane_type == PlaneType::kFloat32) {
      Run(in, static_cast<float*>(out), args);
    } else {
      Run(in, static_cast<std::uint16_t*>(out), args);
    }
  }
}

}  // namespace resunet
