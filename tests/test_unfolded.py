"""Integers computed at run time so that XLA shares kernels between leaves."""

import jax
import jax.numpy as jnp
import numpy as np

from nanoadam_jax import _unfolded


def test_values_and_dtype_survive_jit():
  got = jax.jit(lambda: _unfolded.unfolded_ints([3, 0, 70000], jnp.uint32))()
  assert [int(x) for x in got] == [3, 0, 70000]
  assert all(x.dtype == jnp.uint32 and x.shape == () for x in got)
  assert _unfolded.unfolded_ints([]) == ()


def test_xla_keeps_them_out_of_the_fusions_that_use_them():
  """Two equal-shape products by different numbers: as constants, each
  fusion bakes in its own; unfolded, both read runtime values, which leave
  a loop that XLA keeps."""

  def scaled(numbers):
    def f(x, y):
      a, b = numbers()
      return x * a, y * b

    x = jnp.ones((64,), jnp.int32)
    compiled = jax.jit(f).lower(x, x).compile()
    out = compiled(x, x)
    np.testing.assert_array_equal(out[0], 1234567 * np.ones(64))
    np.testing.assert_array_equal(out[1], 7654321 * np.ones(64))
    return compiled.as_text()

  folded = scaled(lambda: (jnp.int32(1234567), jnp.int32(7654321)))
  unfolded = scaled(lambda: _unfolded.unfolded_ints([1234567, 7654321]))
  assert "while" not in folded and "1234567" in folded
  assert "while" in unfolded
