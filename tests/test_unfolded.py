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


def test_slices_take_each_start_and_size_at_runtime_offsets():
  x = jnp.arange(20).reshape(10, 2)
  y = jnp.arange(10, dtype=jnp.float32)

  def f(x, y):
    return _unfolded.unfolded_slices([x, y], [0, 3, 7], [3, 4, 3])

  got = jax.jit(f)(x, y)
  for (gx, gy), (a, b) in zip(got, [(0, 3), (3, 7), (7, 10)], strict=True):
    np.testing.assert_array_equal(gx, x[a:b])
    np.testing.assert_array_equal(gy, y[a:b])
  same_size = jax.jit(lambda x: _unfolded.unfolded_slices([x], [2, 5], 1))(y)
  assert [float(s[0][0]) for s in same_size] == [2.0, 5.0]
  assert "while" in jax.jit(f).lower(x, y).compile().as_text()
