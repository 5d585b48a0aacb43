// Bilinear resampling with half-pixel centres and no antialiasing: the semantics of
// torch.nn.functional.interpolate(mode="bilinear", align_corners=False), written once for
// the host compiler and for nvcc.
//
// For output index `dst` along an axis of `in` input and `out` output samples:
//   scale = in / out
//   src   = max((dst + 0.5) * scale - 0.5, 0)
//   i0    = min(floor(src), in - 1),  i1 = i0 + (i0 < in - 1)
//   w1    = clamp(src - i0, 0, 1),    w0 = 1 - w1
// A 2-D sample blends the two input rows first, then the two columns:
//   v = wx0 * (wy0 * a[y0][x0] + wy1 * a[y1][x0]) + wx1 * (wy0 * a[y0][x1] + wy1 * a[y1][x1])
//
// The general mapping of an axis (spacing-aware resampling) takes two floats, `step` (input samples
// per output sample) and `origin`, and maps output sample `dst` to
//   src = (dst + 0.5) * step + origin - 0.5
// An output whose src lies outside [-0.5, in - 0.5] is outside the image: its tap has both weights 0,
// so the blend gives exactly 0.0 (the padding value) without a branch in the kernels. Inside, src is
// clamped to [0, in - 1] and the two neighbours are blended as above. The inverse mapping (labels back
// onto the input grid) is src = (dst + 0.5 - origin) / step - 0.5, clamped, never padded.
// step = in / out with origin 0 is torch's mapping again, but the kernels keep linear_tap for it, so
// the default results stay bit-identical to the torch rule (they differ from mapped_tap by rounding at
// the upper edge, where torch blends one sample with itself).
//
// The CPU and CUDA kernels must round identically (labels are compared bit for bit), so every
// float operation goes through the *_rn helpers below: on the device they are the IEEE
// intrinsics nvcc never fuses into an FMA; on the host they are plain operators (the CPU core is
// built without FMA contraction: x86-64 baseline has no FMA, and a build that adds -march=native
// must also pass -ffp-contract=off).
#pragma once

#include "common/macros.h"

namespace resunet {

RESUNET_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

RESUNET_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

RESUNET_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

RESUNET_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Source-to-destination scale of one axis (torch: area_pixel_compute_scale without scale_factor).
RESUNET_HD float linear_scale(int in_size, int out_size) {
  return div_rn(static_cast<float>(in_size), static_cast<float>(out_size));
}

// The two input samples (i0, i1) and their weights (w0, w1) that make output sample `dst`.
struct LinearTap {
  int i0;
  int i1;
  float w0;
  float w1;
};

// torch's area_pixel_compute_source_index + guard_index_and_lambda (align_corners=False).
RESUNET_HD LinearTap linear_tap(int dst, int in_size, float scale) {
  float src = sub_rn(mul_rn(scale, add_rn(static_cast<float>(dst), 0.5f)), 0.5f);
  if (src < 0.0f) src = 0.0f;
  int i0 = static_cast<int>(src);  // floor: src >= 0 here
  if (i0 > in_size - 1) i0 = in_size - 1;
  float w1 = sub_rn(src, static_cast<float>(i0));
  w1 = w1 < 0.0f ? 0.0f : (w1 > 1.0f ? 1.0f : w1);
  LinearTap tap;
  tap.i0 = i0;
  tap.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  tap.w0 = sub_rn(1.0f, w1);
  tap.w1 = w1;
  return tap;
}

// The tap of output sample `dst` under the general mapping; both weights 0 when it falls outside.
RESUNET_HD LinearTap mapped_tap(int dst, int in_size, float step, float origin) {
  const float src = sub_rn(add_rn(mul_rn(add_rn(static_cast<float>(dst), 0.5f), step), origin), 0.5f);
  LinearTap tap;
  tap.i0 = 0;
  tap.i1 = 0;
  tap.w0 = 0.0f;
  tap.w1 = 0.0f;
  const float last = static_cast<float>(in_size - 1);
  if (!(src >= -0.5f && src <= add_rn(last, 0.5f))) return tap;  // outside (also catches NaN)
  const float c = src < 0.0f ? 0.0f : (src > last ? last : src);
  const int i0 = static_cast<int>(c);  // floor: c >= 0 here
  const float w1 = sub_rn(c, static_cast<float>(i0));
  tap.i0 = i0;
  tap.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  tap.w0 = sub_rn(1.0f, w1);
  tap.w1 = w1;
  return tap;
}

// The tap of output sample `dst` under the inverse of the general mapping (step, origin describe the
// forward map from `dst`'s grid to this one's), clamped to [0, in - 1].
RESUNET_HD LinearTap inverse_tap(int dst, int in_size, float step, float origin) {
  float src = sub_rn(div_rn(sub_rn(add_rn(static_cast<float>(dst), 0.5f), origin), step), 0.5f);
  const float last = static_cast<float>(in_size - 1);
  src = src < 0.0f ? 0.0f : (src > last ? last : src);
  const int i0 = static_cast<int>(src);
  const float w1 = sub_rn(src, static_cast<float>(i0));
  LinearTap tap;
  tap.i0 = i0;
  tap.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  tap.w0 = sub_rn(1.0f, w1);
  tap.w1 = w1;
  return tap;
}

// One axis of a resampling: step > 0 is the general mapping (mapped_tap, or inverse_tap when
// `inverse`), step == 0 the torch mapping with scale in / out (linear_tap).
struct AxisMap {
  float step;    // 0: the torch mapping
  float origin;  // general mapping only
  float scale;   // in / out, the torch mapping only
};

RESUNET_HD AxisMap axis_map(int in_size, int out_size, float step, float origin) {
  AxisMap m;
  m.step = step;
  m.origin = origin;
  m.scale = linear_scale(in_size, out_size);
  return m;
}

RESUNET_HD LinearTap forward_axis_tap(int dst, int in_size, const AxisMap& m) {
  return m.step > 0.0f ? mapped_tap(dst, in_size, m.step, m.origin) : linear_tap(dst, in_size, m.scale);
}

RESUNET_HD LinearTap inverse_axis_tap(int dst, int in_size, const AxisMap& m) {
  return m.step > 0.0f ? inverse_tap(dst, in_size, m.step, m.origin) : linear_tap(dst, in_size, m.scale);
}

// Context slice of output slice `index` (= start + i) at channel offset `offset` (= j - K/2): the volume
// is sampled at z = clamp(index + offset * slice_step, 0, depth - 1) and blended linearly between z0
// and z0 + 1 with weight w1 on the latter. An integral z gives w1 == 0 exactly, so slice_step = 1 reads
// exactly one slice per channel.
struct SliceTap {
  int z0;
  float w1;  // > 0 only when z0 + 1 < depth
};

RESUNET_HD SliceTap slice_tap(int index, int offset, float slice_step, int depth) {
  float z = add_rn(static_cast<float>(index), mul_rn(static_cast<float>(offset), slice_step));
  const float last = static_cast<float>(depth - 1);
  z = z < 0.0f ? 0.0f : (z > last ? last : z);
  SliceTap tap;
  tap.z0 = static_cast<int>(z);
  tap.w1 = sub_rn(z, static_cast<float>(tap.z0));
  return tap;
}

// w0 * a + w1 * b, rounded the same way on both devices.
RESUNET_HD float lerp_rn(float a, float b, float w0, float w1) { return add_rn(mul_rn(w0, a), mul_rn(w1, b)); }

// The 2-D sample: rows (y) blended first, then columns (x). a<row><col>.
RESUNET_HD float bilerp_rn(float a00, float a01, float a10, float a11, const LinearTap& ty, const LinearTap& tx) {
  return lerp_rn(lerp_rn(a00, a10, ty.w0, ty.w1), lerp_rn(a01, a11, ty.w0, ty.w1), tx.w0, tx.w1);
}

// HU window: clip to [lo, hi], then (v - lo) / (hi - lo) with range = hi - lo (float).
RESUNET_HD float window_rn(float v, float lo, float hi, float range) {
  v = v < lo ? lo : (v > hi ? hi : v);
  return div_rn(sub_rn(v, lo), range);
}

}  // namespace resunet
