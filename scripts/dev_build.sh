#!/usr/bin/env bash
# Development build: compiles _core with plain CMake and drops it into python/resunet_trt/,
# so `PYTHONPATH=python pytest` runs against the working tree without reinstalling.
#   scripts/dev_build.sh            CPU only (fast)
#   CUDA=ON scripts/dev_build.sh    with the CUDA kernels (needs nvcc)
#   SANITIZE=ON scripts/dev_build.sh  AddressSanitizer + UBSan build of the CPU core
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=${CUDA:-OFF}
sanitize=${SANITIZE:-OFF}
build=${BUILD_DIR:-build/dev-cuda${cuda}-asan${sanitize}}
python=${PYTHON:-python}
pybind_dir=$("$python" -c "import pybind11; print(pybind11.get_cmake_dir())")
# One build at a time: parallel builds would race on the module file.
exec 9>/tmp/resunet-dev-build.lock
flock 9
cmake -S . -B "$build" -G Ninja -DRESUNET_WITH_CUDA="$cuda" -DRESUNET_SANITIZE="$sanitize" \
  -Dpybind11_DIR="$pybind_dir" -DPython_EXECUTABLE="$(command -v "$python")" >/dev/null
# Every build directory links to the same module file: remove it so this configuration always relinks it
# (otherwise ninja may see an up-to-date output that another configuration wrote).
rm -f python/resunet_trt/_core*.so
cmake --build "$build" -j "${JOBS:-2}"
