"""Buffer sizes, and the marker of unused slots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanoadam_jax import _layout


@pytest.mark.parametrize(
  ("density", "n", "k"),
  [
    (0.1, 100, 10),
    (0.07, 100, 7),  # 0.07 * 100 is 7.000000000000001 in binary
    (0.001, 10, 1),  # at least one entry
    (0.5, 3, 2),
    (1.0, 17, 17),
    (0.3, 0, 0),  # empty tensor
    (0.1, 1, 1),  # scalar
  ],
)
def test_buffer_size(density, n, k):
  assert _layout.buffer_size(density, n) == k


@pytest.mark.parametrize(
  ("fraction", "n", "count"),
  [
    (0.07, 100, 7),  # 7.000000000000001 in float64
    (0.05, 100, 5),  # 5.0000001 in float32
    (0.013, 1000, 13),
    (1 / 3, 3, 1),
    (0.3, 7, 3),  # 2.1: a part of an entry is an entry
    (0.5, 1_000_001, 500_001),  # half an entry among a million still counts
  ],
)
def test_ceil_count_is_one_rule_static_and_traced(fraction, n, count):
  static = _layout.ceil_count(fraction, n)
  assert type(static) is int and static == count
  traced = jax.jit(lambda f: _layout.ceil_count(f, n))(jnp.float32(fraction))
  assert traced.dtype == jnp.float32 and int(traced) == count


def test_ceil_count_static_tolerance_is_float64_rounding():
  # 1999799999.0001: a ten-thousandth of an entry, far above float64
  # rounding (a 12-significant-digit rule would drop it).
  assert _layout.ceil_count(0.9999, 1_999_999_999) == 1_999_800_000


def test_unused_marker_lies_past_the_row_unique_and_ascending():
  slots = jnp.arange(4, dtype=jnp.int32)
  marker = _layout.unused_marker(10, slots)
  np.testing.assert_array_equal(marker, [10, 11, 12, 13])
  used = _layout.is_used(jnp.asarray([0, 9, 10, 13], jnp.int32), 10)
  np.testing.assert_array_equal(used, [True, True, False, False])
