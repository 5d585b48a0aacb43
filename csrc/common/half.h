// IEEE binary16 <-> binary32 conversions for the host (numpy float16 arrays are raw uint16 bits to
// C++). The CUDA kernels use __float2half_rn / __half2float, which round the same way.
//
// float -> half rounds to nearest, ties to even, including subnormal results, overflow to +-Inf and
// NaN kept as a quiet NaN (after F. Giesen's float_to_half_fast3_rtne). half -> float is exact.
#pragma once

#include <cstdint>
#include <cstring>

namespace resunet {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Branch-free (masks only), so loops that convert rows of floats vectorise: every case is computed
// and the right one selected.
inline std::uint16_t float_to_half_rn(float value) {
  constexpr std::uint32_t kF32Inf = 255u << 23;
  constexpr std::uint32_t kF16Overflow = (127u + 16u) << 23;                       // 2^16: rounds to Inf
  constexpr std::uint32_t kF16MinNormal = 113u << 23;                              // 2^-14
  constexpr std::uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;  // 0.5f
  std::uint32_t u = float_bits(value);
  const std::uint32_t sign = u & 0x80000000u;
  u ^= sign;
  // Normal half: rebias the exponent, add 0xfff (round half up) plus the kept mantissa's lowest bit
  // (so an exact tie rounds to even), then drop 13 mantissa bits. A carry into the exponent is right.
  const std::uint32_t normal = (u + (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
  // Subnormal or zero half: adding 0.5f aligns the 10 mantissa bits at the bottom of the float, and
  // the float addition itself rounds to nearest even.
  const std::uint32_t subnormal = float_bits(bits_float(u) + bits_float(kDenormMagic)) - kDenormMagic;
  // Too large or Inf -> Inf; NaN -> quiet NaN.
  const std::uint32_t nan_mask = 0u - static_cast<std::uint32_t>(u > kF32Inf);
  const std::uint32_t special = 0x7c00u | (nan_mask & 0x0200u);
  const std::uint32_t subnormal_mask = 0u - static_cast<std::uint32_t>(u < kF16MinNormal);
  const std::uint32_t special_mask = 0u - static_cast<std::uint32_t>(u >= kF16Overflow);
  std::uint32_t out = (normal & ~subnormal_mask) | (subnormal & subnormal_mask);
  out = (out & ~special_mask) | (special & special_mask);
  return static_cast<std::uint16_t>(out | (sign >> 16));
}

// Branch-free (selects only), so loops that convert rows of halves vectorise.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t magnitude = static_cast<std::uint32_t>(h) & 0x7fffu;
  const std::uint32_t sign = (static_cast<std::uint32_t>(h) & 0x8000u) << 16;
  // Normal: move exponent and mantissa into place and rebias the exponent by 127 - 15.
  const std::uint32_t normal = (magnitude << 13) + (112u << 23);
  // Inf/NaN: rebias once more so the exponent becomes 255 (the NaN payload moves along).
  const std::uint32_t special_mask = 0u - static_cast<std::uint32_t>(magnitude >= 0x7c00u);
  std::uint32_t u = normal + (special_mask & (112u << 23));
  // Zero/subnormal: magnitude * 2^-24, exact in float (magnitude < 2^10).
  const std::uint32_t subnormal = float_bits(static_cast<float>(static_cast<std::int32_t>(magnitude)) * 0x1p-24f);
  const std::uint32_t subnormal_mask = 0u - static_cast<std::uint32_t>(magnitude < 0x0400u);
  u = (u & ~subnormal_mask) | (subnormal & subnormal_mask);
  return bits_float(u | sign);
}

}  // namespace resunet
