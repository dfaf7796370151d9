"""Small integers that XLA cannot fold into the kernels that use them.

XLA:CPU compiles one kernel per distinct fusion and shares it between
identical ones. A per-leaf constant that enters a leaf's fusion (an offset
into a stacked buffer, a rounding stream number) makes each leaf's fusion
distinct, so a model compiles the same kernel once per leaf. Handed in as a
runtime value instead, it makes the fusions of leaves of one shape identical,
compiled once.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Iterations of the loop below: two, because XLA inlines a loop that runs
# once and then folds its values.
_TRIPS = 2


def unfolded_ints(
  values: Sequence[int], dtype=jnp.int32
) -> tuple[jax.Array, ...]:
  """``values`` as scalars of ``dtype`` that XLA computes at run time.

  They leave a short loop that adds a zero XLA cannot prove to be zero (the
  loop counter compared past its end), so each is a separate buffer that
  fusions read as a parameter, not a constant they bake in.
  """
  if not values:
    return ()

  def body(carry, trip):
    zero = (trip >= _TRIPS).astype(dtype)
    return tuple(value + zero for value in carry), None

  start = tuple(jnp.asarray(value, dtype) for value in values)
  out, _ = lax.scan(body, start, jnp.arange(_TRIPS, dtype=jnp.int32))
  return out


def unfolded_slices(
  arrays: Sequence[jax.Array],
  starts: Sequence[int],
  size: int | Sequence[int],
) -> list[tuple[jax.Array, ...]]:
  """For each start, ``tuple(x[start : start + size] for x in arrays)``
  (slicing the first axis) at an offset XLA cannot fold: slices of one
  shape share one kernel.

  ``size`` is one size for all starts, or one per start.
  """
  starts = list(starts)
  sizes = [size] * len(starts) if isinstance(size, int) else list(size)
  # The starts are never negative: no wrapping of them to trace and lower.
  return [
    tuple(
      lax.dynamic_slice_in_dim(x, start, n, allow_negative_indices=False)
      for x in arrays
    )
    for start, n in zip(unfolded_ints(starts), sizes, strict=True)
  ]
