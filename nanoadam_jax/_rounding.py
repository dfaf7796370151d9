"""Storing a moment in a narrower float without bias: stochastic rounding.

Adam's second moment moves by ``(1 - b2) * (g**2 - nu)`` per step: with
``b2 = 0.999`` that is a thousandth of the gap, far below half a bfloat16 ulp
of ``nu`` (bfloat16 keeps 8 significant bits), so round-to-nearest storage
throws the increment away and ``nu`` stalls or drifts. Rounding up with
probability equal to the distance from the lower neighbour keeps the stored
value right on average, whatever the increment's size.

The random numbers come from ``seed``, the step, the leaf, the moment and
the entry's position, so a run repeats bit for bit, resumes from a
checkpoint identically, and stores nothing random. They are an integer hash
(:func:`_mix`): a key of two uint32 words per buffer and step
(:func:`rounding_key`), then one number per entry from its position
(:func:`uniform_bits`). Both are plain elementwise integer arithmetic.
``jax.random`` is not used: threefry compiles on XLA:CPU to a loop, and its
loops (keys and bits, per buffer) made a MiniLM train step with 16-bit
block state compile in 39 s, against 7 s with round-to-nearest and 18 s
with this hash (measured); its bits, computed early in the step for every
buffer, also raised the step's peak memory.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nanoadam_jax import _unfolded

# Odd constants that separate the hash's inputs (digits of pi and the golden
# ratio, as is customary); any distinct odd values would do.
_SEED_SALT = 0x243F6A89
_STREAM_SALT = 0x9E3779B9
_SECOND_WORD_SALT = 0x85EBCA6B


def rounding_key(seed: Any, step: Any, tree_no: Any, moment: int):
  """The key of one moment buffer's rounding at one step.

  Args:
    seed: an integer (may be traced).
    step: updates applied so far (may be traced).
    tree_no: the leaf's place in the params' leaves; with ``moment`` (0 for
      ``mu``, 1 for ``nu``) it picks the buffer's own stream.
    moment: 0 or 1.

  Returns:
    shape=(2,), dtype=uint32: the key :func:`uniform_bits` takes.
  """
  first, second = _step_words(seed, step)
  return jnp.stack([first ^ _stream(tree_no, moment), second])


def update_keys(
  seed: Any, step: Any, tree_nos: Sequence[int]
) -> tuple[jax.Array, ...]:
  """The keys of every leaf's two moments at one step, computed at once.

  The words of (seed, step) are computed once, and the leaves' streams in
  one vectorized computation. Each leaf's keys are a separate runtime
  buffer (``_unfolded``): the keys enter every fused loop that rounds a
  buffer, and read at constant offsets they made each leaf's loops distinct
  kernels, which XLA:CPU compiled once per leaf (the update of a MiniLM with
  16-bit block state, its selection left out: 36-50 s against 23 s to
  compile on a busy machine, measured); as runtime buffers the leaves of
  one shape share them.

  Args:
    seed: an integer (may be traced).
    step: updates applied so far (may be traced).
    tree_nos: the leaves' places in the params' leaves.

  Returns:
    One array per leaf, shape=(2, 2), dtype=uint32: its :func:`rounding_key`
    for ``mu`` (row 0) and ``nu`` (row 1).
  """
  first, second = _step_words(seed, step)
  numbers = jnp.asarray(tree_nos, jnp.uint32)
  table = jnp.stack(
    [
      jnp.stack(
        [
          first ^ _stream(numbers, moment),
          jnp.broadcast_to(second, numbers.shape),
        ],
        axis=-1,
      )
      for moment in (0, 1)
    ],
    axis=1,
  )
  slices = _unfolded.unfolded_slices([table], range(len(tree_nos)), 1)
  return tuple(key[0] for (key,) in slices)


def leaf_keys(
  keys: jax.Array | None, seed: Any, step: Any, tree_no: int
) -> jax.Array:
  """One leaf's keys at ``step``, shape=(2, 2): ``keys`` where an update
  computed them with every leaf's (:func:`update_keys`), else computed for
  this leaf alone (the same values)."""
  if keys is not None:
    return keys
  return jnp.stack([rounding_key(seed, step, tree_no, m) for m in (0, 1)])


def _step_words(seed: Any, step: Any) -> tuple[jax.Array, jax.Array]:
  """The two words every buffer's key at ``step`` starts from. Each _mix is
  a bijection of uint32: distinct steps give distinct words."""
  u32 = lambda x: jnp.asarray(x).astype(jnp.uint32)
  first = _mix(_mix(u32(seed) + jnp.uint32(_SEED_SALT)) ^ u32(step))
  return first, _mix(first ^ jnp.uint32(_SECOND_WORD_SALT))


def _stream(tree_no: Any, moment: int) -> jax.Array:
  """The word that separates the stream of one leaf's moment."""
  number = jnp.asarray(tree_no).astype(jnp.uint32) * 2 + moment
  return _mix(number * jnp.uint32(_STREAM_SALT))


def spread_keys(
  keys: Sequence[jax.Array], counts: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
  """Several buffers' keys laid out for their entries (or rows) concatenated.

  Args:
    keys: each buffer's key, shape=(2,), dtype=uint32.
    counts: each buffer's number of entries (or rows).

  Returns:
    (keys, positions): each entry's buffer key, shape=(sum(counts), 2), and
    its position in its own buffer, shape=(sum(counts),), dtype=uint32, so
    that it draws what it would draw alone.
  """
  spread = jnp.concatenate(
    [jnp.broadcast_to(k, (n, 2)) for k, n in zip(keys, counts, strict=True)]
  )
  positions = jnp.concatenate([jnp.arange(n, dtype=jnp.uint32) for n in counts])
  return spread, positions


def row_keys(keys: Sequence[jax.Array], rows: Sequence[int]) -> jax.Array:
  """One key per row of blockwise buffers: the rows draw from distinct
  streams though each counts positions from 0.

  Args:
    keys: each buffer's key, shape=(2,), dtype=uint32.
    rows: each buffer's number of rows.

  Returns:
    shape=(sum(rows), 2), dtype=uint32: the buffers' row keys, one buffer
    after the other. Row ``r`` of a buffer gets the same key whatever the
    buffers beside it, so a step group hashes its leaves' rows at once.
  """
  spread, row = spread_keys(keys, rows)
  first = _mix(spread[:, 0] ^ (row * jnp.uint32(_STREAM_SALT)))
  return jnp.stack([first, spread[:, 1]], axis=-1)


def moment_keys(
  rounding: str,
  keys: jax.Array,
  dtype: Any,
  stored: tuple[Any, Any],
) -> tuple[jax.Array | None, jax.Array | None]:
  """The keys for storing (mu, nu) of a leaf of ``dtype`` in ``stored``
  dtypes: its row of ``keys`` (from :func:`update_keys`) where
  ``rounding="stochastic"`` and the stored dtype is narrower than the step
  computes in (float32, or the param's ``dtype`` where wider), else None (a
  plain cast)."""
  return tuple(
    keys[moment] if is_stochastic(rounding, dtype, stored_dtype) else None
    for moment, stored_dtype in enumerate(stored)
  )


def is_stochastic(rounding: str, dtype: Any, stored: Any) -> bool:
  """Whether a moment stored in ``stored`` for a param of ``dtype`` is
  rounded stochastically: with ``rounding="stochastic"``, where it is
  narrower than the step computes in (float32, or the param's dtype where
  wider)."""
  computed = max(jnp.dtype(dtype).itemsize, 4)
  narrower = jnp.dtype(stored).itemsize < computed
  return rounding == "stochastic" and narrower


def store(
  x: jax.Array,
  dtype: Any,
  key: jax.Array | None,
  positions: jax.Array | None = None,
) -> jax.Array:
  """``x`` in ``dtype``: rounded to nearest without a key, else stochastically.

  Stochastic rounding picks one of the two ``dtype`` neighbours of each
  entry, the upper one with probability ``(x - lower) / (upper - lower)``,
  so ``E[store(x)] == x`` for every finite ``x`` in range. Values ``dtype``
  holds exactly, infinities and NaNs come back unchanged.

  Args:
    x: the moment as computed (float32 or wider).
    dtype: the storage dtype.
    key: a :func:`rounding_key`, or None for round-to-nearest (Optax's
      cast); or one key per entry, shape=x.shape + (2,).
    positions: each entry's position in its buffer (see
      :func:`uniform_bits`); default: its flat position in ``x``.

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
  uniform = uniform_bits(key, x.shape, x.dtype, positions)
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


def uniform_bits(
  key: jax.Array,
  shape: tuple[int, ...],
  dtype: Any,
  positions: jax.Array | None = None,
):
  """Uniform numbers in ``[0, 1)`` on a grid of ``2**-24``, one per entry.

  Each entry hashes its flat position with the key's two words, elementwise,
  so the numbers are computed inside the fused loop that uses them and never
  stored. (``jax.random.uniform``'s bits leave a threefry loop as an array
  per buffer, and XLA computed every buffer's early in a training step,
  where all of them were alive at once: on the 128 MiB model of
  ``benchmarks/bench_step.py`` with 16-bit block state at density 0.1 the
  step's peak fell from 292 to 247 MiB with this function, measured.)

  Args:
    key: shape=(2,), dtype=uint32, from :func:`rounding_key`; the same key
      gives the same numbers. Or one key per entry, shape=shape + (2,):
      several buffers concatenated, each entry with its own buffer's key.
    shape: the output's shape.
    dtype: a float dtype of at least 24 significant bits (float32, float64).
    positions: uint32 of ``shape``, the position each entry hashes; default:
      its flat position. Concatenated buffers pass each entry's position in
      its own buffer, so that it draws what it would draw alone.

  Returns:
    An array of ``dtype`` and ``shape``.
  """
  if positions is None:
    positions = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  bits = _mix(_mix(positions ^ key[..., 0]) + key[..., 1])
  return (bits >> 8).astype(dtype) * jnp.asarray(2.0**-24, dtype)
