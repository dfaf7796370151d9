"""What the pretrained sentence encoders (MiniLM, MPNet) share, in Flax NNX.

Both are post-LayerNorm transformer encoders whose token outputs are averaged
over the attention mask; they differ in their embeddings (MPNet adds a
relative-position bias to every attention layer). This module holds the
common pieces so that ``minilm.py`` and ``mpnet.py`` only say what is theirs:

* :class:`EncoderLayer`, self-attention and a GELU feed-forward block, with
  an optional additive attention bias;
* :func:`mean_pool`, the sentence embedding;
* :func:`linear_names`, :func:`norm_names` and :func:`load_weights`, which
  copy a torch ``safetensors`` checkpoint into the NNX parameters;
* :func:`tokenize` and :func:`token_lengths` over a ``tokenizers.Tokenizer``.

Leaf paths read like ``layers/0/attention/query/kernel`` and
``layers/0/attention_norm/scale``, so ``exclude="norm"`` picks exactly the
LayerNorms of either model.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# ----------------------------------------------------------------------------
# The layer both models stack.


class EncoderLayer(nnx.Module):
  """Self-attention and a GELU feed-forward block, each followed by
  residual-then-LayerNorm (BERT's post-norm order)."""

  def __init__(
    self, hidden: int, heads: int, ffn: int, norm_eps: float, rngs: nnx.Rngs
  ):
    dense = lambda n_in, n_out: nnx.Linear(n_in, n_out, rngs=rngs)
    norm = lambda: nnx.LayerNorm(hidden, epsilon=norm_eps, rngs=rngs)
    self.heads = heads
    self.attention = nnx.Dict(
      query=dense(hidden, hidden),
      key=dense(hidden, hidden),
      value=dense(hidden, hidden),
      output=dense(hidden, hidden),
    )
    self.attention_norm = norm()
    self.intermediate = dense(hidden, ffn)
    self.output = dense(ffn, hidden)
    self.output_norm = norm()

  def __call__(
    self, x: jax.Array, mask: jax.Array, bias: jax.Array | None = None
  ) -> jax.Array:
    """``bias``, shape (heads, length, length), is added to the attention
    logits (MPNet's relative positions); BERT passes none."""
    batch, length, hidden = x.shape
    head_dim = hidden // self.heads
    split = lambda y: y.reshape(batch, length, self.heads, head_dim)
    attention = self.attention
    q = split(attention["query"](x))
    k = split(attention["key"](x))
    v = split(attention["value"](x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    if bias is not None:
      logits = logits + bias[None]
    # Padding keys get no weight; padded queries are dropped by pooling.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(x.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    context = context.reshape(batch, length, hidden)
    x = self.attention_norm(x + attention["output"](context))
    ffn = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
    return self.output_norm(x + ffn)


def mean_pool(states: jax.Array, mask: jax.Array) -> jax.Array:
  """Average of the token states over the mask, shape (batch, hidden)."""
  weights = mask.astype(states.dtype)[..., None]
  return jnp.sum(states * weights, axis=1) / jnp.maximum(
    jnp.sum(weights, axis=1), 1e-9
  )


# ----------------------------------------------------------------------------
# Pretrained weights: torch tensor names -> our parameters.

# Our param path -> (safetensors key, transpose?).
Names = dict[tuple, tuple[str, bool]]


def linear_names(path: tuple, key: str) -> Names:
  """A torch ``nn.Linear`` stores its weight (out, in); Flax's kernel is
  (in, out), hence the transpose."""
  return {
    (*path, "kernel"): (key + ".weight", True),
    (*path, "bias"): (key + ".bias", False),
  }


def norm_names(path: tuple, key: str) -> Names:
  return {
    (*path, "scale"): (key + ".weight", False),
    (*path, "bias"): (key + ".bias", False),
  }


def layer_names(index: int, theirs: dict[tuple, str], prefix: str) -> Names:
  """The names of layer ``index``: ``theirs`` maps our module paths inside
  an :class:`EncoderLayer` (``("attention", "query")``, ``("output_norm",)``)
  to the torch module names under ``prefix``."""
  names = {}
  for ours, key in theirs.items():
    kind = norm_names if ours[-1].endswith("norm") else linear_names
    names |= kind(("layers", index, *ours), prefix + key)
  return names


def load_weights(
  model: nnx.Module, tensors: dict[str, np.ndarray], names: Names
) -> None:
  """Copies ``tensors`` (safetensors names) into ``model`` in place.

  Every parameter must be filled and every tensor shape must match, so a
  renamed or missing weight fails here instead of training from noise.
  """
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


def readers():
  """``safetensors.numpy.load_file`` and ``tokenizers.Tokenizer``.

  Raises:
    RuntimeError: either package is missing; the message says what to
      install.
  """
  try:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
  except ImportError as error:
    raise RuntimeError(
      "The pretrained-encoder examples read the weights with `safetensors` "
      "and the tokenizer with `tokenizers`: pip install safetensors "
      "tokenizers (or pip install -e '.[examples]')."
    ) from error
  return load_file, Tokenizer


# ----------------------------------------------------------------------------
# Tokens.


class Tokens(NamedTuple):
  ids: np.ndarray  # shape=(batch, max_len), dtype=int32; padding is pad_id
  mask: np.ndarray  # shape=(batch, max_len), dtype=bool; True on real tokens


def _pad(tokenizer) -> dict:
  """The padding token of ``tokenizer.json`` (``[PAD]`` = 0 for BERT,
  ``<pad>`` = 1 for MPNet). Both files ship with padding turned on, and we
  never turn it off, so it is always there to read."""
  padding = tokenizer.padding
  if padding is None:
    raise ValueError(
      "The tokenizer has no padding token set; call "
      "tokenizer.enable_padding(pad_id=..., pad_token=...) once."
    )
  return {"pad_id": padding["pad_id"], "pad_token": padding["pad_token"]}


def tokenize(tokenizer, sentences: list[str], max_len: int) -> Tokens:
  """Start token, sentence, end token, truncated and padded to ``max_len``.

  ``tokenizer.json`` has truncation and padding to 128 baked in; we set both
  explicitly so that every batch has the compiled shape.
  """
  tokenizer.enable_padding(length=max_len, **_pad(tokenizer))
  tokenizer.enable_truncation(max_length=max_len)
  encodings = tokenizer.encode_batch(sentences)
  ids = np.array([e.ids for e in encodings], np.int32)
  mask = np.array([e.attention_mask for e in encodings], bool)
  return Tokens(ids, mask)


def token_lengths(tokenizer, sentences: list[str]) -> np.ndarray:
  """Untruncated token counts, start and end tokens included."""
  tokenizer.no_truncation()
  # Padding stays on (tokenize reads the pad token from it); padding never
  # shortens, so the mask counts the real tokens.
  encodings = tokenizer.encode_batch(sentences)
  return np.array([sum(e.attention_mask) for e in encodings])
