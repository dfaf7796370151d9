"""Byte counts of optimizer states, for memory reports and tests."""

import math
from typing import Any

import jax
import jax.numpy as jnp


def state_bytes(tree: Any) -> int:
  """Total bytes of the array leaves of ``tree``.

  Works on concrete arrays and on ``jax.ShapeDtypeStruct`` leaves, so the
  state size can be read without allocating it::

    state = jax.eval_shape(tx.init, params)

  Args:
    tree: any pytree, e.g. an optimizer state.

  Returns:
    The sum over leaves of ``size * itemsize``; leaves without a shape and a
    dtype (Python scalars, None) count as zero.

  Examples:
    >>> import jax.numpy as jnp
    >>> import nanoadam_jax as na
    >>> na.state_bytes({"a": jnp.zeros(10), "b": jnp.zeros(3, jnp.int8)})
    43
  """
  total = 0
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      total += math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
  return total
