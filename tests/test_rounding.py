"""Stochastic rounding of narrow moment storage: unbiased, and it matters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanoadam_jax import _rounding


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_rounding_is_unbiased(dtype):
  # Values between two neighbours, at a quarter, a half and near each end.
  lower = jnp.asarray([1.0, -3.0, 1e-3, 300.0], dtype)
  upper = jnp.nextafter(lower, jnp.asarray(jnp.inf, dtype))
  for fraction in (0.03, 0.25, 0.5, 0.9):
    x = lower.astype(jnp.float32) + fraction * (
      upper.astype(jnp.float32) - lower.astype(jnp.float32)
    )
    # One position over 20000 steps, as a moment entry sees them.
    keys = jax.vmap(lambda t: _rounding.rounding_key(0, t, 0, 1))(
      jnp.arange(20000)
    )
    stored = jax.vmap(lambda k, x=x: _rounding.store(x, dtype, k))(keys)
    # Only the two neighbours occur ...
    is_neighbour = (stored == lower) | (stored == upper)
    assert bool(jnp.all(is_neighbour))
    # ... and the mean is x (binomial s.e. at most 0.0036 of the gap).
    up = np.asarray((stored == upper).mean(0))
    np.testing.assert_allclose(up, fraction, atol=0.02)


def test_exact_values_and_specials_pass_through():
  x = jnp.asarray([0.0, -0.0, 1.5, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
  stored = _rounding.store(x, jnp.bfloat16, _rounding.rounding_key(3, 0, 0, 0))
  np.testing.assert_array_equal(
    np.asarray(stored, np.float32), np.asarray(x, np.float32)
  )
  assert np.signbit(np.asarray(stored, np.float32)[1])


def test_without_a_key_it_is_the_plain_cast():
  x = jax.random.normal(jax.random.key(1), (1000,))
  np.testing.assert_array_equal(
    _rounding.store(x, jnp.bfloat16, None), x.astype(jnp.bfloat16)
  )


def _second_moment(gradients, dtype, rounding):
  """Adam's nu over the gradients' steps, computed in float32 and stored in
  ``dtype`` with ``rounding``; returns the stored trajectory's final value."""
  b2 = 0.999

  def step(nu, inputs):
    grad, t = inputs
    new = b2 * nu.astype(jnp.float32) + (1 - b2) * grad * grad
    key = _rounding.rounding_key(0, t, 0, 1) if rounding else None
    return _rounding.store(new, dtype, key), None

  steps = jnp.arange(gradients.shape[0])
  nu0 = jnp.zeros(gradients.shape[1], dtype)
  final, _ = jax.lax.scan(step, nu0, (gradients, steps))
  return final.astype(jnp.float32)


@pytest.mark.parametrize("kind", ["constant", "gaussian"])
def test_bfloat16_second_moment_does_not_drift(kind):
  """8000 steps on 4096 entries: the stochastically rounded bfloat16 nu keeps
  its mean within 3% of float32 storage's; round-to-nearest does not."""
  shape = (8000, 4096)
  if kind == "constant":
    gradients = jnp.full(shape, 0.01, jnp.float32)
  else:
    gradients = 0.01 * jax.random.normal(jax.random.key(7), shape)
  reference = float(_second_moment(gradients, jnp.float32, False).mean())
  stochastic = float(_second_moment(gradients, jnp.bfloat16, True).mean())
  nearest = float(_second_moment(gradients, jnp.bfloat16, False).mean())
  assert abs(stochastic / reference - 1) < 0.03, (stochastic, reference)
  assert abs(nearest / reference - 1) > 0.03, (nearest, reference)


def test_uniform_bits_are_uniform_and_independent():
  n = 1 << 18
  key = _rounding.rounding_key(0, 0, 0, 0)
  u = np.asarray(_rounding.uniform_bits(key, (n,), jnp.float32))
  assert u.min() >= 0.0 and u.max() < 1.0
  # 64 equal bins: a chi-square of 63 degrees of freedom (sd 11.2).
  counts = np.bincount((u * 64).astype(int), minlength=64)
  chi2 = ((counts - n / 64) ** 2 / (n / 64)).sum()
  assert chi2 < 63 + 6 * 11.2, chi2
  # Neighbouring positions, and the next step's key at the same position,
  # are uncorrelated (s.e. of a correlation: 1 / sqrt(n) = 0.002).
  assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
  other = _rounding.uniform_bits(
    _rounding.rounding_key(0, 1, 0, 0), (n,), jnp.float32
  )
  assert abs(np.corrcoef(u, np.asarray(other))[0, 1]) < 0.01
  # Low bits carry randomness too: the grid of 2**-24 is used.
  assert len(np.unique(u)) > 0.98 * n  # 0.992 n expected from collisions
  # The same key gives the same numbers; the shape only arranges them.
  again = _rounding.uniform_bits(key, (n // 2, 2), jnp.float32)
  np.testing.assert_array_equal(np.asarray(again).reshape(-1), u)


def test_rounding_keys_differ_by_seed_step_leaf_and_moment():
  keys = [
    _rounding.rounding_key(seed, jnp.arange(50), leaf, moment)
    for seed in range(3)
    for leaf in range(40)
    for moment in range(2)
  ]
  # Traced seeds and steps broadcast; each key is (2,) per step here.
  words = np.concatenate([np.asarray(k).T for k in keys])
  assert words.shape == (3 * 40 * 2 * 50, 2)
  assert len(np.unique(words, axis=0)) == len(words)


def test_update_keys_are_each_leafs_rounding_keys():
  """`update` computes every leaf's keys at once, each a runtime buffer (so
  that leaves of one shape share kernels); the keys, and so every rounding,
  stay those of the leaf's place, as a leaf alone computes them."""
  tree_nos = [0, 1, 7, 2**20 + 5]
  got = jax.jit(lambda seed, step: _rounding.update_keys(seed, step, tree_nos))(
    3, 11
  )
  for tree_no, keys in zip(tree_nos, got, strict=True):
    assert keys.shape == (2, 2) and keys.dtype == jnp.uint32
    for moment in (0, 1):
      want = _rounding.rounding_key(3, 11, tree_no, moment)
      np.testing.assert_array_equal(keys[moment], want)
    alone = _rounding.leaf_keys(None, 3, 11, tree_no)
    np.testing.assert_array_equal(keys, alone)
  assert len({tuple(np.asarray(k).ravel()) for k in got}) == len(tree_nos)


def test_row_keys_of_several_buffers_are_each_buffers_own():
  keys = [_rounding.rounding_key(0, 5, tree_no, 0) for tree_no in (2, 7, 9)]
  rows = [3, 1, 4]
  together = np.asarray(_rounding.row_keys(keys, rows))
  alone = [
    np.asarray(_rounding.row_keys([k], [n]))
    for k, n in zip(keys, rows, strict=True)
  ]
  np.testing.assert_array_equal(together, np.concatenate(alone))
  # Each row is its own stream.
  assert len({tuple(row) for row in together}) == sum(rows)


def test_row_keys_give_uncorrelated_rows():
  rows = _rounding.row_keys([_rounding.rounding_key(0, 5, 2, 1)], [64])
  u = np.asarray(
    jax.vmap(lambda key: _rounding.uniform_bits(key, (4096,), jnp.float32))(
      rows
    )
  )
  # Rows count positions from 0 alike; their streams still differ.
  correlation = np.corrcoef(u)[np.triu_indices(64, 1)]
  assert np.abs(correlation).max() < 6 / np.sqrt(4096), correlation
  assert abs(u.mean() - 0.5) < 0.01
