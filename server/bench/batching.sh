#!/usr/bin/env bash
# Benchmark (a) and (c) of docs/benchmarks.md: the real all-MiniLM-L6-v2 on CPU, the batching
# server (maxBatchSize 32, maxQueueDelay 5ms) against an unbatched one (maxBatchSize 1) at the
# same offered loads (open loop, Poisson arrivals), their saturation throughput (closed loop,
# 64 clients), and the direct candle loop at batch 1, 32 and 64 measured in the same run.
# Also the servers' resident memory with the model loaded.
#
#   server/bench/batching.sh                  # about 5 minutes on 2 cores
#   LOADS="50 100" SECONDS_PER=8 server/bench/batching.sh
#
# Everything listens on 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

LOADS=${LOADS:-"40 60 100 150"}
SECONDS_PER=${SECONDS_PER:-12}
PORT=${PORT:-18480}
OUT=$(mktemp -d)
trap 'kill $(cat "$OUT"/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$OUT"' EXIT

echo "bench: building release binaries" >&2
cargo build --release --quiet -p modelfleet-server --bins --example direct_loop
MODEL=$(server/scripts/fetch-model.sh --print-dir)
LOADGEN=target/release/modelfleet-loadgen

echo "bench: direct candle loop (batch 1, 32, 64)" >&2
target/release/examples/direct_loop "$MODEL" "$SECONDS_PER" 1 32 64 > "$OUT/direct.jsonl"

run_server() { # name, extra args...
  local name=$1; shift
  target/release/modelfleet-server --model-uri "file://$MODEL" --listen-address 127.0.0.1 \
    --http-port "$PORT" --grpc-port $((PORT + 1)) --metrics-port $((PORT + 2)) --log-format text \
    --max-queue-size 1024 "$@" 2> "$OUT/$name.log" &
  echo $! > "$OUT/pid"
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health/ready" > /dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$PORT/health/ready" > /dev/null || { cat "$OUT/$name.log" >&2; exit 1; }
  grep VmRSS "/proc/$(cat "$OUT/pid")/status" | awk '{print $2}' > "$OUT/$name.rss_loaded_kib"
  # Restart the peak (VmHWM) here, so it measures serving, not the warm-up batch.
  echo 5 > "/proc/$(cat "$OUT/pid")/clear_refs" || true
  for rate in $LOADS; do
    echo "bench: $name, open loop at $rate req/s" >&2
    "$LOADGEN" --url "http://127.0.0.1:$PORT" --mode open --rate "$rate" --warmup 2s \
      --duration "${SECONDS_PER}s" --json > "$OUT/$name.open.$rate.json"
  done
  curl -s "http://127.0.0.1:$((PORT + 2))/metrics" > "$OUT/$name.metrics.before"
  echo "bench: $name, closed loop with 64 clients" >&2
  "$LOADGEN" --url "http://127.0.0.1:$PORT" --concurrency 64 --warmup 3s \
    --duration "${SECONDS_PER}s" --json > "$OUT/$name.closed.json"
  curl -s "http://127.0.0.1:$((PORT + 2))/metrics" > "$OUT/$name.metrics"
  grep VmHWM "/proc/$(cat "$OUT/pid")/status" | awk '{print $2}' > "$OUT/$name.rss_peak_kib"
  kill -TERM "$(cat "$OUT/pid")"; wait "$(cat "$OUT/pid")" || true
  rm -f "$OUT/pid"
}

run_server batched --max-batch-size 32 --max-queue-delay 5ms
run_server unbatched --max-batch-size 1

python3 - "$OUT" "$LOADS" <<'PY'
import json, sys, os
out, loads = sys.argv[1], sys.argv[2].split()
direct = {d["batch"]: d["sentences_per_s"] for d in map(json.loads, open(f"{out}/direct.jsonl"))}
def load(name): return json.load(open(f"{out}/{name}"))
def metric(name, sample, suffix=""):
    for line in open(f"{out}/{name}.metrics{suffix}"):
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0
def delta(name, sample):
    return metric(name, sample) - metric(name, sample, ".before")
print(f"direct candle loop: batch 1 {direct[1]:.1f}, batch 32 {direct[32]:.1f}, batch 64 {direct[64]:.1f} sentences/s\n")
print("| offered load (req/s) | batched: throughput, p50 / p95 / p99 ms, non-2xx | unbatched: throughput, p50 / p95 / p99 ms, non-2xx |")
print("|---|---|---|")
def cell(r):
    l = r["latency_ms"] or {"p50": 0, "p95": 0, "p99": 0}
    bad = r["sent"] - r["completed"] + r["dropped_by_client"]
    return f'{r["throughput_rps"]:.1f}, {l["p50"]:.0f} / {l["p95"]:.0f} / {l["p99"]:.0f}, {bad}'
for rate in loads:
    print(f"| {rate} | {cell(load(f'batched.open.{rate}.json'))} | {cell(load(f'unbatched.open.{rate}.json'))} |")
b, u = load("batched.closed.json"), load("unbatched.closed.json")
print(f"| saturation (64 clients) | {cell(b)} | {cell(u)} |\n")
mean_batch = delta("batched", "modelfleet_batch_size_sum") / max(delta("batched", "modelfleet_batch_size_count"), 1)
print(f"batched saturation: {b['throughput_rps']:.1f} req/s = {100 * b['throughput_rps'] / direct[32]:.0f}% of the direct loop at batch 32, "
      f"{b['throughput_rps'] / max(u['throughput_rps'], 1e-9):.2f}x the unbatched server; mean batch at saturation {mean_batch:.1f}")
for name in ("batched", "unbatched"):
    loaded = int(open(f"{out}/{name}.rss_loaded_kib").read()) / 1024
    peak = int(open(f"{out}/{name}.rss_peak_kib").read()) / 1024
    print(f"{name} server memory: {loaded:.0f} MiB resident once ready (model loaded, warm-up done), {peak:.0f} MiB peak while serving (VmHWM)")
PY
