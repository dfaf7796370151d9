"""Exact zeros in updates: their sign, whatever tied them to a gradient."""

import jax.numpy as jnp
import numpy as np
import pytest

from nanoadam_jax import _zeros


@pytest.mark.parametrize("negative", [True, False])
@pytest.mark.parametrize("first", [1.0, -2.0, jnp.inf, -jnp.inf, jnp.nan])
def test_zeros_after_has_its_sign_whatever_the_anchor(first, negative):
  # One anchor entry per row.
  anchor = jnp.array([[first], [3.0], [-0.0], [first]], jnp.float32)
  zeros = _zeros.zeros_after(anchor, (4, 5), jnp.bfloat16, negative)
  assert zeros.shape == (4, 5) and zeros.dtype == jnp.bfloat16
  bits = np.asarray(zeros.astype(jnp.float32)).view(np.uint32)
  # -0.0 is the sign bit alone; never NaN or the other zero.
  np.testing.assert_array_equal(bits, 0x80000000 if negative else 0)


def test_negative_zero_update_keeps_every_bit():
  """Why updates are -0.0 where nothing moves: x + (-0.0) is x for every x,
  while x + 0.0 turns -0.0 into +0.0."""
  x = jnp.array([-0.0, 0.0, -1.5, jnp.inf, jnp.nan, 3e-38], jnp.float32)
  same = x + _zeros.zeros(x.shape, x.dtype)
  np.testing.assert_array_equal(
    np.asarray(same).view(np.uint32), np.asarray(x).view(np.uint32)
  )
  assert np.asarray(x + _zeros.zeros(x.shape, x.dtype, False))[0] == 0.0
  assert not np.signbit(np.asarray(x + _zeros.zeros(x.shape, x.dtype, False)))[
    0
  ]
  np.testing.assert_array_equal(_zeros.zeros((2,), jnp.int32), [0, 0])
