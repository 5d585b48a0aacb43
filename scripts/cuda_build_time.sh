#!/usr/bin/env bash
# nvcc time of the CUDA kernels (csrc/cuda/*.cu, one after another) for two architecture lists, repeated:
# what the default CMAKE_CUDA_ARCHITECTURES costs against a shorter list. Prints the load before each run.
#   scripts/cuda_build_time.sh ["80-real;90"] ["75-real;80-real;86-real;89-real;90"] [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
short="${1:-80-real;90}"
long="${2:-75-real;80-real;86-real;89-real;90}"
repeats="${3:-2}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

gencode() {  # "80-real;90" -> nvcc --generate-code flags, as CMake writes them
  local flags="" arch
  IFS=';' read -ra archs <<<"$1"
  for arch in "${archs[@]}"; do
    if [[ "$arch" == *-real ]]; then
      flags+=" --generate-code=arch=compute_${arch%-real},code=[sm_${arch%-real}]"
    else
      flags+=" --generate-code=arch=compute_${arch},code=[compute_${arch},sm_${arch}]"
    fi
  done
  echo "$flags"
}

for ((rep = 1; rep <= repeats; rep++)); do
  for list in "$short" "$long"; do
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    start=$(date +%s.%N)
    for f in csrc/cuda/*.cu; do
      # shellcheck disable=SC2046
      nvcc -O3 -DNDEBUG -Xcompiler=-fPIC --expt-relaxed-constexpr -lineinfo -std=c++17 -DRESUNET_WITH_CUDA=1 -Icsrc \
        $(gencode "$list") -c "$f" -o "$out/$(basename "$f").o"
    done
    end=$(date +%s.%N)
    printf '%-40s run %d: %6.1f s (load %s, %s cores)\n' "$list" "$rep" "$(echo "$end - $start" | bc)" "$load" "$(nproc)"
  done
done
