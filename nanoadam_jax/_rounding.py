"""Storing a moment in a narrower float without bias: stochastic rounding.

Adam's second moment moves by ``(1 - b2) * (g**2 - nu)`` per step: with
``b2 = 0.999`` that is a thousandth of the gap, far below half a bfloat16 ulp
of ``nu`` (bfloat16 keeps 8 significant bits), so round-to-nearest storage
throws the increment away and ``nu`` stalls or drifts. Rounding up with
probability equal to the distance from the lower neighbour keeps the stored
value right on average, whatever the increment's size.

The random numbers come from ``seed``, the step, the leaf, the moment and
the entry's position, so a run repeats bit for bit, resumes from a
checkpoint identically, and stores nothing random. They are a keyed hash of
the position (:func:`uniform_bits`), computed inside the rounding's own
fused loop rather than drawn from ``jax.random`` into an array first.
"""

import math
from typing import Any
from typing import Literal

import jax
import jax.numpy as jnp

ROUNDINGS = ("stochastic", "nearest")
Rounding = Literal["stochastic", "nearest"]


def rounding_key(seed: Any, step: jax.Array, leaf_no: int, moment: int):
  """The key of one moment buffer's rounding at one step."""
  key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.random.fold_in(key, 2 * leaf_no + moment)


def moment_keys(
  rounding: str,
  seed: Any,
  step: jax.Array,
  leaf_no: int,
  dtype: Any,
  stored: tuple[Any, Any],
) -> tuple[jax.Array | None, jax.Array | None]:
  """Keys for storing (mu, nu) of leaf ``leaf_no`` (its place in the params'
  leaves) at ``step``: one where ``rounding="stochastic"`` and the stored
  dtype is narrower than the param's ``dtype``, else None (a plain cast)."""
  keys = []
  for moment, stored_dtype in enumerate(stored):
    narrower = jnp.dtype(stored_dtype).itemsize < jnp.dtype(dtype).itemsize
    if rounding == "stochastic" and narrower:
      keys.append(rounding_key(seed, step, leaf_no, moment))
    else:
      keys.append(None)
  return tuple(keys)


def store(x: jax.Array, dtype: Any, key: jax.Array | None) -> jax.Array:
  """``x`` in ``dtype``: rounded to nearest without a key, else stochastically.

  Stochastic rounding picks one of the two ``dtype`` neighbours of each
  entry, the upper one with probability ``(x - lower) / (upper - lower)``,
  so ``E[store(x)] == x`` for every finite ``x`` in range. Values ``dtype``
  holds exactly, infinities and NaNs come back unchanged.

  Args:
    x: the moment as computed (float32 or wider).
    dtype: the storage dtype.
    key: a ``jax.random`` key (see :func:`uniform_bits`), or None for
      round-to-nearest (Optax's cast).

  Returns:
    An array of ``dtype`` and ``x``'s shape.
  """
  dtype = jnp.dtype(dtype)
  if key is None or dtype.itemsize >= x.dtype.itemsize:
    return x.astype(dtype)
  nearest = x.astype(dtype)
  # The other neighbour lies on the far side of x from the nearest one.
  toward = jnp.where(nearest.astype(x.dtype) > x, -jnp.inf, jnp.inf)
  other = jnp.nextafter(nearest, toward.astype(dtype))
  gap = other.astype(x.dtype) - nearest.astype(x.dtype)
  # P(other) = |x - nearest| / |other - nearest|; 0 where x is exact.
  chance = jnp.where(gap != 0, (x - nearest.astype(x.dtype)) / gap, 0)
  uniform = uniform_bits(key, x.shape, x.dtype)
  take_other = (uniform < chance) & jnp.isfinite(other)
  return jnp.where(take_other, other, nearest)


def _mix(h: jax.Array) -> jax.Array:
  """An integer finaliser on uint32: each input bit flips each output bit
  about half the time (the shifts and odd multipliers of C. Wellons's
  ``lowbias32``, found by his hash prospector)."""
  h ^= h >> 16
  h *= jnp.uint32(0x7FEB352D)
  h ^= h >> 15
  h *= jnp.uint32(0x846CA68B)
  h ^= h >> 16
  return h


def uniform_bits(key: jax.Array, shape: tuple[int, ...], dtype: Any):
  """Uniform numbers in ``[0, 1)`` on a grid of ``2**-24``, one per entry.

  Why not ``jax.random.uniform``: threefry compiles on XLA:CPU to a loop,
  whose bits leave it as a full array per moment buffer, and XLA computes
  every buffer's bits early in a training step (they depend only on the
  step), where all of them are alive at once. On the 128 MiB model of
  ``benchmarks/bench_step.py`` with 16-bit block state at density 0.1 the
  step's peak fell from 292 to 247 MiB with this change, measured. Here
  ``key`` yields two 32-bit words and each entry hashes its flat position
  with them, elementwise, which fuses into the rounding and allocates
  nothing.

  Args:
    key: a ``jax.random`` key; the same key gives the same numbers.
    shape: the output's shape.
    dtype: a float dtype of at least 24 significant bits (float32, float64).

  Returns:
    An array of ``shape`` and ``dtype``.
  """
  words = jax.random.bits(key, (2,), jnp.uint32)
  position = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  h = _mix(_mix(position ^ words[0]) + words[1])
  return (h >> 8).astype(dtype) * jnp.asarray(2.0**-24, dtype)
