#!/usr/bin/env python3
"""Generation benchmark against any OpenAI-compatible server (modelfleet-server, llama.cpp's
server): streamed /v1/completions at 1, 4, 8 and 16 concurrent streams, the same prompts for
every server, greedy, a fixed number of new tokens. Prints one line per concurrency: aggregate
generated tokens/s, TTFT p50/p95 and inter-token latency p50/p95.

  server/bench/generation.py --url http://127.0.0.1:8080 [--streams 1,4,8,16]
      [--prompt-words 150] [--max-tokens 128] [--requests-per-stream 2] [--label ours]

Standard library only. Bounded: streams x requests-per-stream requests per concurrency.
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
    "under bright autumn skies and distant mountains hold their breath beside calm rivers "
).split()


def prompt(i, words):
    # Different per request (no prefix cache can help), the same set for every server.
    body = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words))
    return f"Story {i}: {body}. Continue the story:"


def one_request(url, model, text, max_tokens):
    """Streams one completion; returns (ttft_s, [inter-token gaps], tokens)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = {
        "prompt": text,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        # llama.cpp's server: generate exactly max_tokens, as ours does without an early eos.
        "ignore_eos": True,
    }
    if model:
        body["model"] = model
    started = time.monotonic()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, last, gaps, tokens = None, None, [], 0
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        choices = chunk.get("choices") or []
        if not choices or not choices[0].get("text"):
            continue
        now = time.monotonic()
        tokens += 1
        if ttft is None:
            ttft = now - started
        else:
            gaps.append(now - last)
        last = now
    conn.close()
    return ttft or 0.0, gaps, tokens


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def run(args, streams):
    results, errors = [], []
    lock = threading.Lock()

    def worker(w):
        for r in range(args.requests_per_stream):
            try:
                out = one_request(args.url, args.model, prompt(w * 100 + r, args.prompt_words), args.max_tokens)
                with lock:
                    results.append(out)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    errors.append(str(e))

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    tokens = sum(r[2] for r in results)
    ttfts = [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    print(
        f"{args.label} streams={streams} requests={len(results)} errors={len(errors)} "
        f"tokens={tokens} tok/s={tokens / wall:.1f} "
        f"ttft_p50={percentile(ttfts, 50) * 1e3:.0f}ms ttft_p95={percentile(ttfts, 95) * 1e3:.0f}ms "
        f"itl_p50={percentile(gaps, 50) * 1e3:.1f}ms itl_p95={percentile(gaps, 95) * 1e3:.1f}ms",
        flush=True,
    )
    for e in errors[:3]:
        print(f"  error: {e}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="")
    p.add_argument("--streams", default="1,4,8,16")
    p.add_argument("--prompt-words", type=int, default=150, help="about 200 tokens")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--requests-per-stream", type=int, default=2)
    p.add_argument("--label", default="server")
    args = p.parse_args()
    one_request(args.url, args.model, prompt(9999, 8), 4)  # warm-up
    for n in (int(s) for s in args.streams.split(",")):
        run(args, n)


if __name__ == "__main__":
    main()
