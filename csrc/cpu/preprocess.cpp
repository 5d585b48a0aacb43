// CPU preprocess: HU window + bilinear resize + 2.5D stacking in one pass over the input.
//
// The work unit is one output row of one input plane, (s, y): the two input rows y0, y1 that row y
// needs are windowed and blended vertically into a W-long float buffer (a straight, vectorisable
// loop over contiguous memory), then each output column gathers two neighbours from that buffer.
// Row and column taps (indices + weights) are computed once per call. The finished row is converted
// to the output type once and copied to every (output slice, channel) that shows plane s, so each
// input slice is read and resized once no matter how large the context K is.
//
// OpenMP splits the flattened (s, y) range statically: neighbouring rows of one thread share input
// rows in cache, and a one-slice volume still uses every core.
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

template <typename In, typename Out>
void Run(const In* volume, Out* out, const PreprocessArgs& a) {
  const int D = a.depth, H = a.height, W = a.width, h = a.out_height, w = a.out_width, K = a.context;
  const int half_k = K / 2;
  const int n_out = a.stop - a.start;
  const float lo = a.lo, hi = a.hi, range = sub_rn(a.hi, a.lo);
  const std::size_t plane_in = static_cast<std::size_t>(H) * W;
  const std::size_t plane_out = static_cast<std::size_t>(h) * w;

  std::vector<LinearTap> row_taps(h);
  const float scale_y = linear_scale(H, h), scale_x = linear_scale(W, w);
  for (int y = 0; y < h; ++y) row_taps[y] = linear_tap(y, H, scale_y);
  // Column taps as separate arrays, so the column loop reads them with plain (vector) loads.
  std::vector<int> col_i0(w), col_i1(w);
  std::vector<float> col_w0(w), col_w1(w);
  for (int x = 0; x < w; ++x) {
    const LinearTap t = linear_tap(x, W, scale_x);
    col_i0[x] = t.i0;
    col_i1[x] = t.i1;
    col_w0[x] = t.w0;
    col_w1[x] = t.w1;
  }

  // Input slices read, and for each the output planes (i * K + j) that show it.
  const int s_first = std::max(a.start - half_k, 0);
  const int s_last = std::min(a.stop - 1 + half_k, D - 1);
  const int n_slices = s_last - s_first + 1;
  std::vector<std::vector<std::int64_t>> targets(n_slices);
  for (int i = 0; i < n_out; ++i) {
    for (int j = 0; j < K; ++j) {
      const int s = std::min(std::max(a.start + i + j - half_k, 0), D - 1);
      targets[s - s_first].push_back(static_cast<std::int64_t>(i) * K + j);
    }
  }

  // For float volumes, output row y checks the input rows after the previous row's last tap up to
  // its own last tap (the last row: to the end), so every row of every slice read is checked exactly
  // once, including rows a downsampling resize skips.
  std::vector<int> check_begin(h), check_end(h);
  for (int y = 0; y < h; ++y) {
    check_begin[y] = y == 0 ? 0 : row_taps[y - 1].i1 + 1;
    check_end[y] = y == h - 1 ? H : row_taps[y].i1 + 1;
  }

  const std::int64_t n_rows = static_cast<std::int64_t>(n_slices) * h;
  int bad_slice = std::numeric_limits<int>::max();

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
      const In* plane = volume + static_cast<std::size_t>(s) * plane_in;
      const LinearTap ty = row_taps[y];
      const In* row0 = plane + static_cast<std::size_t>(ty.i0) * W;
      const In* row1 = plane + static_cast<std::size_t>(ty.i1) * W;

      if constexpr (std::is_same<In, float>::value) {
        bool finite = true;
        for (int yy = check_begin[y]; finite && yy < check_end[y]; ++yy) {
          finite = RowFinite(plane + static_cast<std::size_t>(yy) * W, W);
        }
        if (!finite) {
          bad_slice = std::min(bad_slice, s);
          continue;  // the call throws after the loop; this row's output is never seen
        }
      }
      for (int x = 0; x < W; ++x) {
        const float v0 = window_rn(static_cast<float>(row0[x]), lo, hi, range);
        const float v1 = window_rn(static_cast<float>(row1[x]), lo, hi, range);
        blend[x] = lerp_rn(v0, v1, ty.w0, ty.w1);
      }

      if constexpr (std::is_same<Out, float>::value) {
        for (int x = 0; x < w; ++x) row_out[x] = lerp_rn(blend[col_i0[x]], blend[col_i1[x]], col_w0[x], col_w1[x]);
      } else {
        // Gather, then convert in a separate (vectorised) loop.
        for (int x = 0; x < w; ++x) row_f[x] = lerp_rn(blend[col_i0[x]], blend[col_i1[x]], col_w0[x], col_w1[x]);
        for (int x = 0; x < w; ++x) row_out[x] = float_to_half_rn(row_f[x]);
      }
      for (const std::int64_t t : targets[s - s_first]) {
        std::memcpy(out + static_cast<std::size_t>(t) * plane_out + static_cast<std::size_t>(y) * w, row_out.data(),
                    sizeof(Out) * w);
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
