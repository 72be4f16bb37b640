#!/usr/bin/env bash
# Builds llama.cpp's server and batched bench (the peer of the generation benchmark) from the
# llama.cpp vendored in the PyPI sdist of llama-cpp-python, once, cached by version.
#
#   server/bench/build-llama-cpp.sh              # build if missing; progress on stderr
#   server/bench/build-llama-cpp.sh --print-dir  # ... then print only the bin directory
#   server/bench/build-llama-cpp.sh --help
#
# Cache: ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/llama.cpp-<version>/bin (llama-server and
# llama-batched-bench, linked statically so the directory can move). Needs python3 with pip, cmake and g++ (Debian:
# apt-get install cmake g++). About 35 minutes on 2 cores. CPU backend with AVX2/AVX-512/VNNI
# chosen at build time (GGML_NATIVE off, the variants listed explicitly) and AMX off: its path
# crashed in the 2-core VM this was measured on.
set -euo pipefail

PACKAGE=llama-cpp-python
VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-server llama-batched-bench)

CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}"
DEST="$CACHE/llama.cpp-$VERSION"
BIN="$DEST/bin"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
log() { echo "build-llama-cpp: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_dir=false
for arg in "$@"; do
  case "$arg" in
    --print-dir) print_dir=true ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-llama-cpp.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

built() { local t; for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done; }

if built; then
  log "llama.cpp of $PACKAGE $VERSION already built in $BIN"
else
  for tool in python3 cmake g++; do command -v "$tool" >/dev/null || die "$tool is needed"; done
  mkdir -p "$CACHE"
  work="$(mktemp -d "$CACHE/.build-llama-cpp.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  log "downloading the $PACKAGE==$VERSION sdist from PyPI"
  # pip prepares the sdist's metadata in an isolated environment (its build backend from the
  # same index); nothing is built here.
  python3 -m pip download --no-deps --no-binary=:all: --no-input --disable-pip-version-check \
    --progress-bar off --quiet "$PACKAGE==$VERSION" -d "$work/download" >&2 \
    || die "pip download failed"
  sdist=("$work"/download/*.tar.gz)
  [[ ${#sdist[@]} -eq 1 && -f "${sdist[0]}" ]] || die "expected one sdist, got: ${sdist[*]}"
  got="$(sha256sum "${sdist[0]}" | cut -d' ' -f1)"
  [[ "$got" == "$SDIST_SHA256" ]] || die "$(basename "${sdist[0]}") has SHA-256 $got, expected $SDIST_SHA256"
  tar -xzf "${sdist[0]}" -C "$work"
  src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
  [[ -f "$src/CMakeLists.txt" ]] || die "no vendored llama.cpp in the sdist"
  log "configuring (cmake)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_BUILD_TESTS=OFF -DLLAMA_BUILD_TESTS=OFF >"$work/cmake.log" 2>&1 \
    || { tail -20 "$work/cmake.log" >&2; die "cmake failed"; }
  log "building ${TARGETS[*]} (about 35 minutes on 2 cores)"
  cmake --build "$work/build" --target "${TARGETS[@]}" -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log" >&2; die "the build failed"; }
  staged="$work/out/bin"
  mkdir -p "$staged"
  cp -a "$work/build/bin/." "$staged/"
  rm -rf "$DEST"
  mv "$work/out" "$DEST"
  built || die "the build left no ${TARGETS[*]} in $BIN"
  log "ready in $BIN"
fi

if $print_dir; then echo "$BIN"; fi
