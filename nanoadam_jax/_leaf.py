"""What every kind of leaf offers the walk over the params.

NanoAdam treats each param leaf in one of three ways: sparse (Adam on its
selected entries, ``_sparse_leaf``), dense (excluded: AdamW on every entry)
or frozen (an excluded non-float leaf, or an empty one: a zero update and no
state; both in ``_dense_leaf``). Each kind is a small frozen dataclass with
the same interface, so that ``update`` plans the leaves, checks their
buffers, re-selects the sparse ones by group and steps each leaf, without
asking which kind it holds.
"""

from typing import Any
from typing import NamedTuple
from typing import Protocol

import jax
import jax.numpy as jnp
import optax

# A leaf's state: (indices, mu, nu), each an array or an ``optax.MaskedNode``
# where the kind keeps none.
Buffers = tuple[Any, Any, Any]


class BufferSpec(NamedTuple):
  """The shapes of the buffers a leaf keeps; None where it keeps none."""

  indices: tuple[int, ...] | None
  mu: tuple[int, ...] | None
  nu: tuple[int, ...] | None
  index_dtype: Any = None  # the indices' dtype, where there are indices


class Leaf(Protocol):
  """One param leaf as a NanoAdam transformation trains it."""

  kind: str  # "sparse", "dense" or "frozen"
  path: str  # "/"-joined, as ``exclude`` sees it
  shape: tuple[int, ...]
  dtype: Any

  def init(self) -> Buffers:
    """The leaf's buffers before the first update."""
    ...

  def expected_buffers(self) -> BufferSpec:
    """What :meth:`init` returns, as shapes."""
    ...

  def step(
    self,
    grad: jax.Array,
    param: jax.Array,
    buffers: Buffers,
    step: jax.Array,
    step_size: jax.Array | None,
  ) -> tuple[jax.Array, Buffers]:
    """The leaf's update at ``step`` (updates applied so far) and its new
    buffers; ``step_size`` scales the update (None: the direction)."""
    ...


# What each kind does with the leaf, for error messages.
_ROLES = {
  "sparse": "it trains the leaf sparsely",
  "dense": "it trains the leaf densely",
  "frozen": "the leaf is frozen or empty",
}


def check_buffers(leaf: Leaf, buffers: Buffers) -> None:
  """Raises unless ``buffers`` are what ``leaf`` keeps.

  A state restored from a checkpoint written with another ``density``,
  ``exclude``, ``granularity`` or ``block_size`` has buffers of other sizes
  (or none); say so, naming the leaf, before anything broadcasts.
  """
  spec = leaf.expected_buffers()
  role = _ROLES[leaf.kind]
  hint = (
    "was the state built with another density, exclude, granularity or "
    "block_size (or for other params)?"
  )
  fields = ("indices", "mu", "nu")
  for field, buffer, shape in zip(fields, buffers, spec[:3], strict=True):
    name = f"state.{field} for {leaf.path!r}"
    absent = isinstance(buffer, optax.MaskedNode)
    got = None if absent else tuple(getattr(buffer, "shape", ()))
    if absent and shape is None:
      continue
    if absent or shape is None:
      raise ValueError(
        f"{name} is {'empty' if absent else f'of shape {got}'} but this "
        f"optimizer keeps {shape or 'none'} ({role}): {hint}"
      )
    if got != shape:
      raise ValueError(
        f"{name} has shape {got} but this optimizer keeps {shape}: {hint}"
      )
    dtype = jnp.dtype(buffer.dtype)
    if field == "indices" and dtype != spec.index_dtype:
      raise ValueError(
        f"{name} has dtype {dtype.name} but this optimizer keeps "
        f"{spec.index_dtype.name}: {hint}"
      )
