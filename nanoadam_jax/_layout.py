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
from typing import Literal
from typing import NamedTuple
from typing import get_args

import jax
import jax.numpy as jnp

Granularity = Literal["tensor", "block"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)

# Largest block whose local indices fit int16.
INT16_BLOCK_LIMIT = 2**15


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
  return flat.reshape(layout.rows, layout.row_size)


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
