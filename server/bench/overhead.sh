#!/usr/bin/env bash
# Benchmark (b) of docs/benchmarks.md: the server's own overhead, with the synthetic backend at
# zero compute, driven by modelfleet-loadgen (1 thread) on the same machine.
#
#   server/bench/overhead.sh            # CONCURRENCY=64 SECONDS_PER=10
set -euo pipefail
cd "$(dirname "$0")/../.."
CONCURRENCY=${CONCURRENCY:-64}
SECONDS_PER=${SECONDS_PER:-10}
PORT=${PORT:-18580}
cargo build --release --quiet -p modelfleet-server --bins
target/release/modelfleet-server --backend synthetic --listen-address 127.0.0.1 --http-port "$PORT" \
  --grpc-port $((PORT + 1)) --metrics-port $((PORT + 2)) --log-format text 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
target/release/modelfleet-loadgen --url "http://127.0.0.1:$PORT" --concurrency "$CONCURRENCY" \
  --warmup 2s --duration "${SECONDS_PER}s"
echo "server peak memory: $(grep VmHWM /proc/$pid/status | awk '{print $2/1024}') MiB"
