#!/usr/bin/env bash
# Generation side by side: modelfleet-server (release, candle, CPU) and llama.cpp's server on the
# same GGUF (SmolLM2-135M-Instruct Q4_1), one after the other, the same threads and prompts,
# through server/bench/generation.py at 1, 4, 8 and 16 streams. About 6 minutes on 2 cores once
# the model and llama.cpp are cached (build-llama-cpp.sh takes about 12 minutes the first time).
#
#   server/bench/generation-vs-llama-cpp.sh            # STREAMS=1,4,8,16 THREADS=2 override
#
# Listens on 127.0.0.1:18080 (ours) and 127.0.0.1:18085 (llama.cpp); stops both when done.
set -euo pipefail
cd "$(dirname "$0")/../.."

STREAMS="${STREAMS:-1,4,8,16}"
THREADS="${THREADS:-2}"
GGUF="$(server/scripts/fetch-llm.sh --print-path)"
LLAMA="$(server/bench/build-llama-cpp.sh --print-dir)"
cargo build --release --quiet -p modelfleet-server --bin modelfleet-server
OURS=target/release/modelfleet-server

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
wait_for() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; echo "no answer from $1" >&2; return 1; }

echo "machine: $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"
RAYON_NUM_THREADS="$THREADS" "$OURS" --task generation --model-uri "file://$GGUF" --listen-address 127.0.0.1 \
  --http-port 18080 --grpc-port 18081 --metrics-port 18090 --log-format text >/dev/null 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:18080/health/ready
python3 server/bench/generation.py --url http://127.0.0.1:18080 --streams "$STREAMS" --label modelfleet
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

"$LLAMA/llama-server" -m "$GGUF" --host 127.0.0.1 --port 18085 -t "$THREADS" -np 16 -c 8192 >/dev/null 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:18085/health
python3 server/bench/generation.py --url http://127.0.0.1:18085 --streams "$STREAMS" --label llama.cpp
