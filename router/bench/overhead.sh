#!/usr/bin/env bash
# Benchmark of docs/benchmarks.md (Router): the router's own overhead. One synthetic
# modelfleet-server at zero compute; the same modelfleet-loadgen, in the same run, against the
# server directly and through one modelfleet-router (--static-config, cache off so every request
# reaches the server):
#   1. open loop at RATE req/s (default 5000): p50 / p99 of each, and the difference;
#   2. closed loop with CONCURRENCY clients (default 64): the most requests/s of each.
# Everything (server, router, load generator) shares this machine's cores. Stops by itself.
#
#   router/bench/overhead.sh            # RATE=5000 CONCURRENCY=64 SECONDS_PER=10 ROUTER=<binary>
set -euo pipefail
cd "$(dirname "$0")/../.."
# ROUTER=path runs another router binary (an A/B of a change) instead of the one built here.
RATE=${RATE:-5000}
CONCURRENCY=${CONCURRENCY:-64}
SECONDS_PER=${SECONDS_PER:-10}
PORT=${PORT:-18680}
echo "building release binaries (modelfleet-server, modelfleet-loadgen, modelfleet-router)..." >&2
cargo build --release --quiet -p modelfleet-server -p modelfleet-router --bins
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
target/release/modelfleet-server --backend synthetic --model-name emb --listen-address 127.0.0.1 \
  --http-port "$PORT" --grpc-port $((PORT + 1)) --metrics-port $((PORT + 2)) --log-format text 2>/dev/null &
pids+=($!)
printf 'models:\n  - {name: emb, endpoints: ["127.0.0.1:%s"]}\n' "$PORT" >"$dir/router.yaml"
# Per-request logs off: at thousands of requests a second they would measure the log sink.
RUST_LOG=warn "${ROUTER:-target/release/modelfleet-router}" --static-config "$dir/router.yaml" --allow-anonymous \
  --cache-bytes 0 --http-addr 127.0.0.1:$((PORT + 10)) --metrics-addr 127.0.0.1:$((PORT + 11)) \
  --log-format text 2>/dev/null &
pids+=($!)
for url in "http://127.0.0.1:$PORT/health/ready" "http://127.0.0.1:$((PORT + 11))/readyz"; do
  for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
done
run() { # name url loadgen-args...
  local name=$1 url=$2
  shift 2
  target/release/modelfleet-loadgen --url "$url" --model emb --warmup 2s --duration "${SECONDS_PER}s" \
    --json-out "$dir/$name.json" "$@" >/dev/null
}
field() { python3 -c "import json,sys; r=json.load(open('$dir/$1.json')); print($2)"; }
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
echo "open loop at $RATE req/s, ${SECONDS_PER}s each..." >&2
# --timer sleep: a spinning generator would keep one of the two cores busy and leave the server
# and the router to share the other. Sleeping, it sends up to ~2 ms late (counted as latency, the
# same on both paths).
run direct-open "http://127.0.0.1:$PORT" --mode open --rate "$RATE" --timer sleep
run router-open "http://127.0.0.1:$((PORT + 10))" --mode open --rate "$RATE" --timer sleep
echo "closed loop with $CONCURRENCY clients, ${SECONDS_PER}s each..." >&2
run direct-closed "http://127.0.0.1:$PORT" --concurrency "$CONCURRENCY"
server_cpu0=$(cpu "${pids[0]}")
run direct-closed-cpu "http://127.0.0.1:$PORT" --concurrency "$CONCURRENCY"
server_cpu=$(python3 -c "print($(cpu "${pids[0]}") - $server_cpu0)")
router_cpu0=$(cpu "${pids[1]}")
run router-closed "http://127.0.0.1:$((PORT + 10))" --concurrency "$CONCURRENCY"
router_cpu=$(python3 -c "print($(cpu "${pids[1]}") - $router_cpu0)")
echo
echo "| path | open loop $RATE req/s: p50 / p99 (ms) | non-2xx or errors | closed loop $CONCURRENCY clients: req/s | p99 (ms) |"
echo "|---|---|---|---|---|"
for path in direct router; do
  o=$path-open c=$path-closed
  bad="$(field "$o" "r['sent']-r['completed']") / $(field "$c" "r['sent']-r['completed']")"
  echo "| $path | $(field "$o" "'%.3f / %.3f' % (r['latency_ms']['p50'], r['latency_ms']['p99'])") | $bad | $(field "$c" "'%.0f' % r['throughput_rps']") | $(field "$c" "'%.2f' % r['latency_ms']['p99']") |"
done
echo
echo "added by the router at $RATE req/s: p50 $(python3 -c "
import json
d=json.load(open('$dir/direct-open.json'))['latency_ms']; r=json.load(open('$dir/router-open.json'))['latency_ms']
print('%.3f ms, p99 %.3f ms' % (r['p50']-d['p50'], r['p99']-d['p99']))")"
python3 - "$dir" "$server_cpu" "$router_cpu" <<'PY'
import json, sys
def per_request(name, cpu_s):
    r = json.load(open(f"{sys.argv[1]}/{name}.json"))
    # The warm-up's requests ran on the same CPU clock: count them at the measured rate.
    return float(cpu_s) / (r["completed"] * (1 + 2.0 / r["duration_s"])) * 1e6
server, router = per_request("direct-closed-cpu", sys.argv[2]), per_request("router-closed", sys.argv[3])
print(f"CPU per request (closed loop, user + system): server {server:.1f} us, router {router:.1f} us")
print(f"-> one router alone on 2 cores: about {2e6 / router:,.0f} req/s")
PY
echo "router peak memory: $(grep VmHWM /proc/${pids[1]}/status | awk '{print $2/1024}') MiB"
