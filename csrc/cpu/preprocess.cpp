// CPU preprocess: HU window + bilinear resample + 2.5D stacking in one pass over the input.
//
// Row y of input slice s: the two input rows y0, y1 that output row y needs are windowed and blended
// vertically into a W-long float buffer (a straight, vectorisable loop over contiguous memory), then
// each output column gathers two neighbours from that buffer. Row, column and slice taps are computed
// once per call, and each input row is read and resampled once per call however large the context K
// or however fine the slice_step:
//   - when every output plane shows one input slice (slice_step integral, the usual case), the work
//     unit is (s, y): the finished row is converted to the output type once and copied to every
//     (output slice, channel) that shows slice s;
//   - when some channel falls between two slices, the work unit is output row y across the slab: the
//     finished rows of all slices read are kept per thread, and every output (i, j) takes a copy of
//     its slice's row or the blend (1 - f) * row(z0) + f * row(z0 + 1). The resample is linear, so
//     blending resampled rows is resampling blended slices.
// OpenMP splits the units statically, so a thread's units are neighbours and share input rows in cache.
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

  // Row y of slice s: checks the float input rows that output row y owns (see above), then, when some
  // output reads the slice, windows and resamples row y into dst (w floats). False on NaN/Inf.
  auto resample_row = [&](int s, int y, float* blend, float* dst) -> bool {
    const In* plane = volume + static_cast<std::size_t>(s) * plane_in;
    if constexpr (std::is_same<In, float>::value) {
      for (int yy = check_begin[y]; yy < check_end[y]; ++yy) {
        if (!RowFinite(plane + static_cast<std::size_t>(yy) * W, W)) return false;
      }
    }
    if (slot[s - s_first] < 0) return true;  // no output reads this slice
    const LinearTap ty = row_taps[y];
    const In* row0 = plane + static_cast<std::size_t>(ty.i0) * W;
    const In* row1 = plane + static_cast<std::size_t>(ty.i1) * W;
    for (int x = 0; x < W; ++x) {
      const float v0 = window_rn(static_cast<float>(row0[x]), lo, hi, range);
      const float v1 = window_rn(static_cast<float>(row1[x]), lo, hi, range);
      blend[x] = lerp_rn(v0, v1, ty.w0, ty.w1);
    }
    for (int x = 0; x < w; ++x) dst[x] = lerp_rn(blend[col_i0[x]], blend[col_i1[x]], col_w0[x], col_w1[x]);
    return true;
  };

  bool any_blend = false;
  for (const SliceTap& t : z_taps) any_blend = any_blend || t.w1 > 0.0f;
  int bad_slice = std::numeric_limits<int>::max();

  if (!any_blend) {
    // Every output plane is one input slice (slice_step integral): the work unit is one row (s, y) of
    // one input slice, copied to every output plane that shows the slice. Neighbouring units of a
    // thread are neighbouring rows of one slice, which share input rows in cache, and a one-slice
    // volume still uses every core.
    std::vector<std::vector<std::int64_t>> targets(span);
    for (std::size_t t = 0; t < z_taps.size(); ++t) targets[z_taps[t].z0 - s_first].push_back(t);
    const std::int64_t n_rows = static_cast<std::int64_t>(span) * h;
#if defined(RESUNET_WITH_OPENMP)
#pragma omp parallel reduction(min : bad_slice)
#endif
    {
      std::vector<float> blend(W);
      std::vector<float> row_f(w);
      std::vector<Out> row_out(w);
#if defined(RESUNET_WITH_OPENMP)
#pragma omp for schedule(static)
#endif
      for (std::int64_t r = 0; r < n_rows; ++r) {
        const int s = s_first + static_cast<int>(r / h);
        const int y = static_cast<int>(r % h);
        if (!resample_row(s, y, blend.data(), row_f.data())) {
          bad_slice = std::min(bad_slice, s);
          continue;  // the call throws after the loop; this row's output is never seen
        }
        if (targets[s - s_first].empty()) continue;
        StoreRow(row_out.data(), row_f.data(), w);
        for (const std::int64_t t : targets[s - s_first]) {
          std::memcpy(out + static_cast<std::size_t>(t) * plane_out + static_cast<std::size_t>(y) * w,
                      row_out.data(), sizeof(Out) * w);
        }
      }
    }
  } else {
    // Some output planes blend two slices: the work unit is output row y across the slab, so that
    // both rows of every blend are at hand (kept in per-thread buffers, float and output type).
#if defined(RESUNET_WITH_OPENMP)
#pragma omp parallel reduction(min : bad_slice)
#endif
    {
      std::vector<float> blend(W);
      std::vector<float> row_f(w);
      std::vector<float> rows_f(static_cast<std::size_t>(n_read) * w);  // finished rows, float
      std::vector<Out> rows_out(static_cast<std::size_t>(n_read) * w);   // and in the output type
#if defined(RESUNET_WITH_OPENMP)
#pragma omp for schedule(static)
#endif
      for (int y = 0; y < h; ++y) {
        bool finite = true;
        for (int s = s_first; finite && s <= s_last; ++s) {
          const int k = slot[s - s_first];
          float* dst = rows_f.data() + static_cast<std::size_t>(k < 0 ? 0 : k) * w;
          finite = resample_row(s, y, blend.data(), dst);
          if (!finite) {
            bad_slice = std::min(bad_slice, s);
          } else if (k >= 0) {
            StoreRow(rows_out.data() + static_cast<std::size_t>(k) * w, dst, w);
          }
        }
        if (!finite) continue;

        for (std::size_t t = 0; t < z_taps.size(); ++t) {
          const SliceTap zt = z_taps[t];
          Out* dst = out + t * plane_out + static_cast<std::size_t>(y) * w;
          const int k0 = slot[zt.z0 - s_first];
          if (zt.w1 == 0.0f) {
            std::memcpy(dst, rows_out.data() + static_cast<std::size_t>(k0) * w, sizeof(Out) * w);
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
