"""The shared Adam arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nanoadam_jax import _adam
from tests.conftest import optax_reference


def test_adam_direction_matches_optax_scale_by_adam_with_decay():
  rng = np.random.default_rng(0)
  param = jnp.asarray(rng.normal(size=50), jnp.float32)
  grads = [jnp.asarray(rng.normal(size=50), jnp.float32) for _ in range(5)]
  reference = optax.chain(
    optax.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-9),
    optax.add_decayed_weights(0.1),
  )
  ref_state = reference.init(param)
  mu = nu = jnp.zeros(50, jnp.float32)
  for step, grad in enumerate(grads):
    with optax_reference():
      expected, ref_state = reference.update(grad, ref_state, param)
    direction, mu, nu = _adam.adam_direction(
      grad,
      mu,
      nu,
      param,
      jnp.asarray(step + 1, jnp.int32),
      b1=0.8,
      b2=0.99,
      eps=1e-6,
      eps_root=1e-9,
      weight_decay=0.1,
    )
    np.testing.assert_allclose(direction, expected, rtol=1e-6, atol=1e-7)


def test_adam_direction_keeps_moment_dtypes_with_traced_hyperparameters():
  @jax.jit
  def step(b1, b2):
    return _adam.adam_direction(
      jnp.ones(3, jnp.bfloat16),
      jnp.zeros(3, jnp.float32),
      jnp.zeros(3, jnp.bfloat16),
      None,
      jnp.asarray(1, jnp.int32),
      b1=b1,
      b2=b2,
      eps=1e-8,
      eps_root=0.0,
      weight_decay=0.0,
    )

  _, mu, nu = step(jnp.asarray(0.9), jnp.asarray(0.999))
  assert mu.dtype == jnp.float32 and nu.dtype == jnp.bfloat16


def test_scaled_multiplies_in_float32_then_rounds_once():
  direction = jnp.asarray([1.0, -3.0, 1e-3], jnp.float32)
  unscaled = _adam.scaled(direction, None, jnp.bfloat16)
  np.testing.assert_array_equal(unscaled, direction.astype(jnp.bfloat16))
  scaled = _adam.scaled(direction, jnp.float32(-0.1), jnp.bfloat16)
  assert scaled.dtype == jnp.bfloat16
  expected = (jnp.float32(-0.1) * direction).astype(jnp.bfloat16)
  np.testing.assert_array_equal(scaled, expected)


@pytest.mark.parametrize(
  ("dtypes", "expected"),
  [
    ((jnp.bfloat16,), jnp.float32),
    ((jnp.float16, jnp.bfloat16), jnp.float32),
    ((jnp.float32, jnp.bfloat16), jnp.float32),
    ((jnp.bfloat16, jnp.float64), jnp.float64),
  ],
)
def test_compute_dtype_is_float32_at_least(dtypes, expected):
  assert _adam.compute_dtype(*dtypes) == jnp.dtype(expected)
