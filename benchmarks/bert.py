"""A small BERT encoder in pure JAX, shaped like MiniLM-L6, for benchmarks.

Randomly initialised, nothing downloaded: the optimizer benchmarks need the
parameter tree (shapes, leaf count, names) and a realistic forward and
backward pass, not trained weights. The default config is
sentence-transformers' all-MiniLM-L6-v2: vocabulary 30522, hidden 384, 6
layers of 12 heads, FFN 1536 with GELU, post-LayerNorm, 512 positions, 2
token types; a mean-pooled sentence vector feeds a linear 2-class head.

Leaf names follow Hugging Face's BERT loosely; every LayerNorm sits under a
name containing ``norm`` and the classifier under ``head``, so
``exclude="norm|head"`` gives the paper's setting (layer norms and head
trained densely).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BertConfig(NamedTuple):
  vocab: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  ffn: int = 1536
  positions: int = 512
  token_types: int = 2
  classes: int = 2


MINILM = BertConfig()
# bert-base-uncased's shape (its vocabulary rounded up to 30527, as in the
# benchmark's memory table): 110M parameters.
BERT_BASE = BertConfig(vocab=30527, hidden=768, layers=12, heads=12, ffn=3072)
# A few-second smoke test of the same code.
TINY = BertConfig(
  vocab=1000, hidden=64, layers=2, heads=4, ffn=128, positions=64
)


def init_params(config: BertConfig, key: jax.Array) -> dict:
  """BERT's initialisation: normal(0.02) weights, zero biases, unit norms."""
  keys = iter(jax.random.split(key, 8 + 6 * config.layers))

  def normal(*shape):
    return 0.02 * jax.random.normal(next(keys), shape, jnp.float32)

  def dense(fan_in, fan_out):
    return {
      "kernel": normal(fan_in, fan_out),
      "bias": jnp.zeros((fan_out,), jnp.float32),
    }

  def norm(width):
    return {
      "scale": jnp.ones((width,), jnp.float32),
      "bias": jnp.zeros((width,), jnp.float32),
    }

  h = config.hidden
  layers = []
  for _ in range(config.layers):
    layers.append(
      {
        "attention": {
          "query": dense(h, h),
          "key": dense(h, h),
          "value": dense(h, h),
          "output": dense(h, h),
        },
        "attention_norm": norm(h),
        "ffn": {
          "intermediate": dense(h, config.ffn),
          "output": dense(config.ffn, h),
        },
        "ffn_norm": norm(h),
      }
    )
  return {
    "embeddings": {
      "word": normal(config.vocab, h),
      "position": normal(config.positions, h),
      "token_type": normal(config.token_types, h),
      "norm": norm(h),
    },
    "layers": layers,
    "head": dense(h, config.classes),
  }


def _layer_norm(x, p, eps=1e-12):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _attention(x, mask, p, heads):
  batch, length, width = x.shape

  def split(y):
    return y.reshape(batch, length, heads, width // heads)

  q, k, v = (split(_dense(x, p[name])) for name in ("query", "key", "value"))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(
    jnp.float32(width // heads)
  )
  logits = jnp.where(mask[:, None, None, :], logits, jnp.float32(-1e9))
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  return _dense(out.reshape(batch, length, width), p["output"])


def forward(params: dict, batch: dict, config: BertConfig) -> jax.Array:
  """Class logits ``(batch, classes)`` for token ids ``(batch, length)``."""
  tokens, types, mask = batch["tokens"], batch["types"], batch["mask"]
  emb = params["embeddings"]
  positions = jnp.arange(tokens.shape[1])
  x = (
    emb["word"][tokens] + emb["position"][positions] + emb["token_type"][types]
  )
  x = _layer_norm(x, emb["norm"])
  for layer in params["layers"]:
    x = _layer_norm(
      x + _attention(x, mask, layer["attention"], config.heads),
      layer["attention_norm"],
    )
    hidden = jax.nn.gelu(_dense(x, layer["ffn"]["intermediate"]))
    x = _layer_norm(
      x + _dense(hidden, layer["ffn"]["output"]), layer["ffn_norm"]
    )
  weights = mask.astype(jnp.float32)[..., None]
  pooled = jnp.sum(x * weights, axis=1) / jnp.sum(weights, axis=1)
  return _dense(pooled, params["head"])


def loss_fn(params: dict, batch: dict, config: BertConfig) -> jax.Array:
  """Mean cross-entropy of the class logits."""
  logits = forward(params, batch, config)
  log_probs = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, batch["labels"][:, None], axis=1)
  return -jnp.mean(picked)


def random_batch(
  config: BertConfig, key: jax.Array, batch_size: int = 32, length: int = 48
) -> dict:
  """Random token ids, token types, a padding mask and labels."""
  keys = jax.random.split(key, 4)
  tokens = jax.random.randint(
    keys[0], (batch_size, length), 0, config.vocab, jnp.int32
  )
  types = jax.random.randint(
    keys[1], (batch_size, length), 0, config.token_types, jnp.int32
  )
  # Each sentence keeps at least a quarter of the length, then padding.
  lengths = jax.random.randint(
    keys[2], (batch_size, 1), length // 4, length + 1, jnp.int32
  )
  mask = jnp.arange(length)[None, :] < lengths
  labels = jax.random.randint(
    keys[3], (batch_size,), 0, config.classes, jnp.int32
  )
  return {"tokens": tokens, "types": types, "mask": mask, "labels": labels}
