"""How a sparse leaf's entries are split into rows that select independently.

Per-tensor selection (the paper's method) is one row of ``n`` entries. Block
selection (MicroAdam-style) cuts the flattened tensor into contiguous blocks
of ``block_size`` entries, each choosing its own ``k`` entries; its indices
are block-local, so they fit int16 for blocks of at most 32768 entries, never
overflow for huge tensors, and stay on the shard that owns the block.
"""

import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Step counts and flat indices are int32.
MAX_INT32 = 2**31 - 1

# Largest block whose local indices fit int16.
INT16_BLOCK_LIMIT = 2**15


# A product ``fraction * n`` within this many machine epsilons (relative) of
# an integer is that integer: rounding the fraction to binary and the product
# cost at most one epsilon each.
_ROUNDING_EPSILONS = 2


def ceil_count(fraction: Any, n: int) -> Any:
  """``ceil(fraction * n)``, where a product within rounding of an integer
  counts as that integer.

  A fraction as a user writes it is rarely exact in binary: 0.07 * 100 is
  7.000000000000001 in float64 and float32(0.05) * 100 is 5.0000001, and
  neither may add an entry. A product within ``_ROUNDING_EPSILONS`` machine
  epsilons (relative, of the dtype it is computed in) of an integer is taken
  as that integer; any farther, it is rounded up, so that half an entry is an
  entry even among millions (0.5 * 1_000_001 is 500_001).

  Args:
    fraction: a Python or NumPy number (static: the product is computed in
      float64), or a JAX array (traced: computed in its dtype, float32 for a
      density schedule).
    n: the number of entries, a Python int.

  Returns:
    A Python int for a static ``fraction``; for a traced one, an array of
    ``fraction``'s float dtype holding an integer (clip it before converting
    to int32: float32 rounds ``n`` near 2**31 up to 2**31).
  """
  traced = isinstance(fraction, jax.Array)
  xp = jnp if traced else np
  if not traced:
    fraction = np.float64(fraction)
  wanted = fraction * n
  nearest = xp.round(wanted)
  tolerance = _ROUNDING_EPSILONS * float(xp.finfo(wanted.dtype).eps)
  is_rounding = xp.abs(wanted - nearest) <= tolerance * wanted
  count = xp.where(is_rounding, nearest, xp.ceil(wanted))
  return count if traced else int(count)


def buffer_size(density: float, n: int) -> int:
  """``k = max(1, ceil(density * n))`` entries, 0 for an empty tensor.

  ``ceil`` as :func:`ceil_count` rounds: a density written as 0.07 selects 7
  of 100 entries, not 8.
  """
  if n == 0:
    return 0
  return max(1, min(n, ceil_count(density, n)))


class Layout(NamedTuple):
  """Static facts about one sparse leaf's rows."""

  n: int  # entries in the tensor
  rows: int  # 1 per tensor, or the number of blocks
  row_size: int  # entries per row (the last block is padded up to it)
  k: int  # selected entries per row
  blockwise: bool
  index_dtype: Any  # int32, or int16 for small blocks

  @property
  def buffer_shape(self) -> tuple[int, ...]:
    """Shape of the index and moment buffers: ``(k,)`` or ``(rows, k)``."""
    return (self.rows, self.k) if self.blockwise else (self.k,)

  @property
  def rows_shape(self) -> tuple[int, ...]:
    """Shape of the entries as :func:`to_rows` lays them out: ``(n,)`` or
    ``(rows, row_size)``."""
    return (self.rows, self.row_size) if self.blockwise else (self.n,)

  @property
  def padding(self) -> int:
    return self.rows * self.row_size - self.n


def make_layout(
  n: int, k_of: Callable[[int], int], block_size: int | None
) -> Layout:
  """Lays out ``n`` entries; ``k_of(row_size)`` sizes each row's buffer."""
  if block_size is None:
    return Layout(n, 1, n, k_of(n), False, jnp.dtype(jnp.int32))
  row_size = max(1, min(block_size, n))
  rows = math.ceil(n / row_size) if n else 0
  index_dtype = jnp.int16 if row_size <= INT16_BLOCK_LIMIT else jnp.int32
  return Layout(n, rows, row_size, k_of(row_size), True, jnp.dtype(index_dtype))


def unused_marker(row_size: int, slots: jax.Array) -> jax.Array:
  """What an unused slot holds instead of an index: ``row_size + slot``.

  A slot is unused past a density schedule's ``k_t``, or where
  ``approx_min_k`` found fewer entries than slots. The marker lies past the
  row, in its :func:`marker_room`, where a step reads zeros and writes what
  it drops; it is unique and larger than every real index, so a row's buffer
  stays ascending and unique.
  :func:`is_used` reads it.
  """
  return row_size + slots


def marker_room(layout: Layout) -> int:
  """Entries past each row of ``layout`` that hold every
  :func:`unused_marker` of its ``k`` slots: addressed with this room after
  each row, a marker is in bounds and still unique and ascending."""
  return layout.k


def is_used(where: jax.Array, row_size: int) -> jax.Array:
  """Whether each slot of ``where`` (indices are never negative) holds a
  real index of a row of ``row_size`` entries, not :func:`unused_marker`."""
  return where < row_size


def to_rows(x: jax.Array, layout: Layout, pad_value: Any = 0) -> jax.Array:
  """Flattens ``x``, pads the last block, and returns rows (or the flat row).

  Per-tensor layouts return the flat ``(n,)`` array; blockwise ones
  ``(rows, row_size)``.
  """
  flat = x.reshape(-1)
  if not layout.blockwise:
    return flat
  if layout.padding:
    flat = jnp.pad(flat, (0, layout.padding), constant_values=pad_value)
  return flat.reshape(layout.rows_shape)


def from_rows(rows: jax.Array, layout: Layout, shape: tuple[int, ...]):
  """Inverse of :func:`to_rows`: drops the padding and restores ``shape``."""
  flat = rows.reshape(-1)
  if layout.padding:
    flat = flat[: layout.n]
  return flat.reshape(shape)


def per_row(fn: Callable, layout: Layout, broadcast: tuple[int, ...] = ()):
  """Applies a function written for one row to every row of ``layout``.

  Args:
    fn: a function of 1-D rows (and scalars).
    layout: the leaf's layout.
    broadcast: positions of arguments shared by all rows (scalars).

  Returns:
    ``fn`` itself for a per-tensor layout, else ``fn`` vmapped over rows; the
    vmapped gathers and scatters carry the row as a batch dimension, which
    lets XLA keep them on the shard that owns the row.
  """
  if not layout.blockwise:
    return fn

  def mapped(*args):
    in_axes = tuple(None if i in broadcast else 0 for i in range(len(args)))
    return jax.vmap(fn, in_axes=in_axes)(*args)

  return mapped
