#!/usr/bin/env bash
# Builds llama.cpp's server and batched bench (the peer of the generation benchmark) from the
# llama.cpp vendored in the PyPI sdist of llama-cpp-python, once, cached by version.
#
#   server/bench/build-llama-cpp.sh              # build if missing; progress on stderr
#   server/bench/build-llama-cpp.sh --print-dir  # ... then print only the bin directory
#   server/bench/build-llama-cpp.sh --help
#
# Cache: ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/llama.cpp-<version>-<cpu>/bin (llama-server
# and llama-batched-bench, linked statically so the directory can move), where <cpu> names the
# instruction sets of this CPU the build uses. Needs python3 with pip, cmake and g++ (Debian:
# apt-get install cmake g++). About 12 minutes on 2 cores. CPU backend with the AVX2/AVX-512/VNNI
# variants this CPU has (read from /proc/cpuinfo, GGML_NATIVE off so the choice is explicit; a
# binary built for another CPU can die of an illegal instruction) and AMX off: its path crashed
# in the 2-core VM this was measured on.
set -euo pipefail

PACKAGE=llama-cpp-python
VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-server llama-batched-bench)

# ggml's CPU variants and the /proc/cpuinfo flag each needs.
VARIANTS=(AVX:avx AVX2:avx2 FMA:fma F16C:f16c BMI2:bmi2 AVX_VNNI:avx_vnni AVX512:avx512f
  AVX512_VBMI:avx512vbmi AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16)
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
ggml_flags=()
cpu_name=""
for variant in "${VARIANTS[@]}"; do
  option="${variant%%:*}" flag="${variant#*:}"
  if [[ " $cpu_flags " == *" $flag "* ]]; then
    ggml_flags+=("-DGGML_$option=ON")
    cpu_name+="${cpu_name:+.}$flag"
  else
    ggml_flags+=("-DGGML_$option=OFF")
  fi
done
[[ -n "$cpu_name" ]] || cpu_name=generic

CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}"
DEST="$CACHE/llama.cpp-$VERSION-$(printf %s "$cpu_name" | sha256sum | cut -c1-10)"
BIN="$DEST/bin"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
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

# Tests running in parallel ask at once: one builds, the others wait for it.
mkdir -p "$CACHE"
exec 9>"$CACHE/.llama-cpp.lock"
flock 9

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
  log "configuring (cmake) for this CPU's $cpu_name"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF "${ggml_flags[@]}" \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_BUILD_TESTS=OFF -DLLAMA_BUILD_TESTS=OFF >"$work/cmake.log" 2>&1 \
    || { tail -20 "$work/cmake.log" >&2; die "cmake failed"; }
  log "building ${TARGETS[*]} (about 12 minutes on 2 cores)"
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
