#!/usr/bin/env bash
# Runs the CPU kernel tests against an AddressSanitizer + UBSan build of the compiled core.
#
#   scripts/asan_check.sh                       connected components / postprocess tests (+ image op tests if present)
#   scripts/asan_check.sh tests/test_x.py ...   the given test files
#
# The sanitized module is built in its own build directory (build/asan) with scripts/dev_build.sh, which writes
# it to python/resunet_trt/. It is moved at once into a private copy of the package, and the module that was
# there before is put back, so the working tree keeps a normal, loadable module. Python itself is not
# instrumented, so the ASan runtime is preloaded; leak checking is off (the interpreter keeps its arenas).
# Any ASan report or UBSan error aborts the run with a non-zero exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
pkg=python/resunet_trt

if [ "$#" -gt 0 ]; then
  tests=("$@")
else
  tests=()
  for t in tests/test_connected_components.py tests/test_postprocess.py tests/test_preprocess.py \
           tests/test_logits_to_labels.py tests/test_image_ops.py; do
    [ -f "$t" ] && tests+=("$t")
  done
fi

stage=$(mktemp -d)
saved=""
restored=0
restore_module() {
  # Put the normal module back (atomic rename) so nothing else picks up the sanitized one.
  if [ -n "$saved" ] && [ "$restored" = 0 ]; then
    cp -p "$saved" "$pkg/$(basename "$saved" .normal).restore"
    mv -f "$pkg/$(basename "$saved" .normal).restore" "$pkg/$(basename "$saved" .normal)"
  fi
  restored=1
}
cleanup() {
  restore_module
  [ -n "${KEEP_STAGE:-}" ] || rm -rf "$stage"
}
trap cleanup EXIT
for so in "$pkg"/_core*.so; do
  [ -e "$so" ] || continue
  saved="$stage/$(basename "$so").normal"
  cp -p "$so" "$saved"
  # Ninja compares file times: make the existing module look old so the sanitized one is always relinked.
  touch -d @0 "$so"
done

SANITIZE=ON CUDA=OFF BUILD_DIR=build/asan PYTHON="$python" scripts/dev_build.sh
asan_so=$(ls "$pkg"/_core*.so)
mkdir -p "$stage/python"
cp -r "$pkg" "$stage/python/"
cp "$asan_so" "$stage/python/resunet_trt/"
if [ -n "$saved" ]; then
  restore_module
else
  rm -f "$asan_so"
  PYTHON="$python" scripts/dev_build.sh
  restored=1
fi

# libstdc++ is preloaded too: Python does not link it, and without it ASan cannot find the real __cxa_throw
# ("CHECK failed: ... real___cxa_throw") the first time the core throws a C++ exception.
libasan=$(gcc -print-file-name=libasan.so)
libstdcxx=$(gcc -print-file-name=libstdc++.so)
echo "asan_check: staged in $stage; $libasan; tests: ${tests[*]}"
LD_PRELOAD="$libasan $libstdcxx" \
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
PYTHONPATH="$stage/python" \
  "$python" -m pytest -q -p no:cacheprovider "${tests[@]}"
echo "asan_check: the tests ran clean under AddressSanitizer + UBSan"
