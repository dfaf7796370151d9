"""Exact zeros in updates: their sign, and when XLA may allocate them.

An update is exactly zero on every entry NanoAdam does not train. Two things
about those zeros matter: their sign (so that ``optax.apply_updates`` leaves
every bit of an untrained param as it was) and their place in XLA's schedule
(a buffer with no inputs may be allocated at the start of a training step and
kept alive to its end).
"""

from typing import Any

import jax
import jax.numpy as jnp


def zero_after(anchor: jax.Array) -> jax.Array:
  """``+0`` in the shape and dtype of ``anchor``, which XLA can only compute
  once ``anchor`` exists.

  XLA schedules an operation whose inputs are all ready early, possibly at
  the start of a training step, and keeps its output alive until its last
  use. Adding this zero ties a value computed from the state alone (a dense
  buffer, a leaf's scatter positions, its stored indices) to the leaf's
  gradient instead, at the cost of one operation per entry of ``anchor``:
  pass one entry of the gradient, or one per block (each block's own entry
  keeps a sharded block on its shard). The zero is ``+0`` whatever
  ``anchor`` holds (negative, infinite or NaN).
  """
  return jnp.where(jnp.isfinite(anchor), jnp.abs(anchor) * 0, 0)


def zeros_after(
  anchor: jax.Array,
  shape: tuple[int, ...],
  dtype: Any,
  negative: bool = True,
) -> jax.Array:
  """Zeros of ``shape`` that XLA can only allocate once ``anchor`` exists.

  A plain ``jnp.zeros`` has no inputs, so XLA's scheduler may allocate every
  leaf's dense update buffer at the start of a training step, while the
  backward pass still holds all gradients: measured on CPU, that doubles the
  step's temporary memory. Broadcasting :func:`zero_after` of ``anchor``
  (one entry of the gathered gradient, or one per block; it must broadcast
  to ``shape``) ties each buffer's lifetime to its own gradient. The zero's
  sign is :func:`zero_sign`'s.
  """
  zero = zero_after(anchor)
  if negative:
    zero = -zero
  return jnp.broadcast_to(zero.astype(dtype), shape)


def zeros(shape: tuple[int, ...], dtype: Any, negative: bool = True):
  """Zeros of ``shape`` and ``dtype``; ``-0.0`` where ``negative`` and the
  dtype is a float (see :func:`zero_sign`)."""
  negative = negative and jnp.issubdtype(dtype, jnp.floating)
  return jnp.full(shape, -0.0 if negative else 0, dtype)


def zero_sign(step_size: Any) -> bool:
  """Whether the zeros of an update are ``-0.0`` (True) or ``+0.0``.

  ``x + (-0.0)`` is ``x`` bit for bit for every ``x``, ``-0.0`` included,
  while ``-0.0 + 0.0`` is ``+0.0``: a final update (``step_size`` given)
  writes ``-0.0`` where nothing moves. An unscaled direction (``step_size``
  None) writes ``+0.0``, which the negative step of
  ``optax.scale_by_learning_rate`` later in the chain turns into ``-0.0``.
  """
  return step_size is not None
