"""One sparse leaf's operations, called directly on hand-checked buffers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanoadam_jax import _config
from nanoadam_jax import _sparse_leaf


def make_config(**overrides) -> _config.LeafConfig:
  options = dict(
    density=0.5,
    mask_interval=10,
    density_schedule=None,
    density_interval=None,
    moments="remap",
    select="smallest",
    selection="auto",
    block_size=None,
    mu_dtype=None,
    nu_dtype=None,
    rounding="stochastic",
    seed=0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    weight_decay=0.0,
  )
  options.update(overrides)
  return _config.LeafConfig(**options)


def make_leaf(shape, **overrides) -> _sparse_leaf.SparseLeaf:
  config = make_config(**overrides)
  return _sparse_leaf.SparseLeaf.build(config, "w", shape, jnp.float32, 0, 0)


def f32(values):
  return jnp.asarray(values, jnp.float32)


def step_no(t):
  return jnp.asarray(t, jnp.int32)


@pytest.mark.parametrize("moments", ["remap", "reset"])
def test_reselect_remaps_kept_moments_and_zeroes_new_ones(moments):
  leaf = make_leaf((6,), moments=moments)
  assert leaf.layout.k == 3
  # Selected before: entries 1, 3, 5. Now the smallest |theta| are 0, 3, 4.
  old = (
    jnp.asarray([1, 3, 5], jnp.int32),
    f32([10.0, 30.0, 50.0]),
    f32([11.0, 31.0, 51.0]),
  )
  param = f32([0.01, 1.0, -2.0, -0.02, 0.03, 0.5])
  indices, mu, nu = leaf.reselect(param, step_no(10), old)
  np.testing.assert_array_equal(indices, [0, 3, 4])
  if moments == "remap":  # entry 3 keeps its moments; 0 and 4 start at zero
    np.testing.assert_array_equal(mu, [0.0, 30.0, 0.0])
    np.testing.assert_array_equal(nu, [0.0, 31.0, 0.0])
  else:
    np.testing.assert_array_equal(mu, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(nu, [0.0, 0.0, 0.0])
  assert indices.dtype == jnp.int32 and mu.dtype == nu.dtype == jnp.float32


def test_first_reselect_keeps_nothing_from_the_zero_buffers():
  leaf = make_leaf((6,))
  param = f32([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
  # Zero indices would match entry 0, but nothing was selected before step 0.
  old = (jnp.zeros(3, jnp.int32), f32([7.0, 7.0, 7.0]), f32([7.0, 7.0, 7.0]))
  indices, mu, nu = leaf.reselect(param, step_no(0), old)
  np.testing.assert_array_equal(indices, [0, 1, 2])
  np.testing.assert_array_equal(mu, [0.0, 0.0, 0.0])
  np.testing.assert_array_equal(nu, [0.0, 0.0, 0.0])


def test_reselect_remaps_within_each_block():
  leaf = make_leaf((8,), block_size=4)
  assert leaf.layout.buffer_shape == (2, 2)
  assert leaf.layout.index_dtype == jnp.int16
  old = (
    jnp.asarray([[0, 1], [2, 3]], jnp.int16),  # block-local
    f32([[1.0, 2.0], [3.0, 4.0]]),
    f32([[5.0, 6.0], [7.0, 8.0]]),
  )
  param = f32([0.9, 0.01, 0.02, 0.8, 0.01, 0.5, 0.6, 0.02])
  indices, mu, nu = leaf.reselect(param, step_no(20), old)
  np.testing.assert_array_equal(indices, [[1, 2], [0, 3]])
  np.testing.assert_array_equal(mu, [[2.0, 0.0], [0.0, 4.0]])
  np.testing.assert_array_equal(nu, [[6.0, 0.0], [0.0, 8.0]])
  assert indices.dtype == jnp.int16


def test_step_is_adam_on_the_selection_and_exactly_zero_elsewhere():
  leaf = make_leaf((2, 3))
  grad = f32([[0.5, -1.0, 2.0], [-0.25, 3.0, -4.0]])
  param = f32([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  buffers = (jnp.asarray([0, 3, 4], jnp.int32), f32([0, 0, 0]), f32([0, 0, 0]))
  update, (indices, mu, nu) = leaf.step(
    grad, param, buffers, step_no(0), f32(-0.1)
  )
  assert update.shape == (2, 3) and update.dtype == jnp.float32
  np.testing.assert_array_equal(indices, buffers[0])  # stored as they were
  selected = np.asarray(grad).reshape(-1)[[0, 3, 4]]
  # A first Adam step from zero moments is g / (|g| + eps), up to the float32
  # bias correction (1 - float32(0.999) is 1.3e-5 off 0.001).
  np.testing.assert_allclose(
    np.asarray(update).reshape(-1)[[0, 3, 4]],
    -0.1 * selected / (np.abs(selected) + 1e-8),
    rtol=1e-5,
  )
  np.testing.assert_allclose(mu, 0.1 * selected, rtol=1e-6)
  np.testing.assert_allclose(nu, 0.001 * selected**2, rtol=1e-5)
  outside = np.asarray(update).reshape(-1)[[1, 2, 5]]
  # -0.0, which adds to any param without changing a bit.
  np.testing.assert_array_equal(outside.view(np.uint32), 0x80000000)
  # The unscaled direction's zeros are +0.0: a negative step makes them -0.0.
  direction, _ = leaf.step(grad, param, buffers, step_no(0), None)
  unscaled = np.asarray(direction).reshape(-1)[[1, 2, 5]]
  np.testing.assert_array_equal(unscaled.view(np.uint32), 0)


def test_step_under_a_schedule_uses_only_the_active_slots():
  leaf = make_leaf(
    (6,),
    density_schedule=lambda t: jnp.where(t < 10, 0.5, 1 / 6),
    density_interval=10,
  )
  assert int(leaf.active_count(step_no(3))) == 3
  assert int(leaf.active_count(step_no(12))) == 1
  grad = f32([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
  param = f32([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
  buffers = (jnp.asarray([1, 2, 4], jnp.int32), f32([0, 0, 0]), f32([0, 0, 0]))
  update, (_, mu, nu) = leaf.step(grad, param, buffers, step_no(12), None)
  np.testing.assert_array_equal(np.asarray(update) != 0, [0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(mu) != 0, [1, 0, 0])
  np.testing.assert_array_equal(np.asarray(nu) != 0, [1, 0, 0])


@pytest.mark.parametrize(
  ("overrides", "indices", "moved"),
  [
    # A schedule uses the first slot of each block: entries 1 and 4.
    (
      dict(density_schedule=lambda t: 0.25, density_interval=10),
      [[1, 3], [0, 2]],
      [1, 4],
    ),
    # approx_min_k pads a block's short selection with row_size + slot: the
    # 5 of the first block is padding, not the second block's entry 1.
    (dict(selection="approx"), [[1, 5], [0, 2]], [1, 4, 6]),
  ],
)
def test_block_step_writes_unused_slots_nowhere(overrides, indices, moved):
  leaf = make_leaf((8,), block_size=4, **overrides)
  assert leaf.layout.buffer_shape == (2, 2)
  grad = np.arange(1.0, 9.0, dtype=np.float32)
  buffers = (
    jnp.asarray(indices, jnp.int16),
    jnp.zeros((2, 2), jnp.float32),
    jnp.zeros((2, 2), jnp.float32),
  )
  update, (_, mu, nu) = leaf.step(
    f32(grad), jnp.ones(8, jnp.float32), buffers, step_no(3), None
  )
  np.testing.assert_array_equal(np.flatnonzero(update), moved)
  # Each used slot's moment holds its own block's gradient entry.
  np.testing.assert_allclose(
    np.asarray(mu)[np.asarray(mu) != 0], grad[moved] / 10
  )


@pytest.mark.parametrize(
  "overrides",
  [
    dict(),
    dict(density_schedule=lambda t: 0.3, density_interval=10),
    dict(selection="approx"),
  ],
)
def test_block_step_flat_and_per_block_addressing_agree(overrides, monkeypatch):
  # One device addresses blocks through flat positions, more devices through
  # (block, entry) pairs; both must give the same bits. 37 entries in blocks
  # of 8: the last block is padded.
  leaf = make_leaf(
    (37,),
    density=0.5,
    block_size=8,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
    weight_decay=0.1,
    **overrides,
  )
  assert leaf.gathers_flat
  rng = np.random.default_rng(3)
  grad = f32(rng.normal(size=37))
  param = f32(rng.normal(size=37))
  rows, k = leaf.layout.buffer_shape
  # Ascending distinct block-local indices; the last block's stay inside
  # its 5 real entries.
  indices = np.stack(
    [
      np.sort(rng.choice(8 if r < rows - 1 else 5, k, replace=False))
      for r in range(rows)
    ]
  )
  buffers = (
    jnp.asarray(indices, jnp.int16),
    jnp.asarray(rng.normal(size=(rows, k)), jnp.bfloat16),
    jnp.asarray(rng.uniform(size=(rows, k)), jnp.bfloat16),
  )

  def run():
    return jax.jit(leaf.step)(grad, param, buffers, step_no(3), f32(-0.01))

  flat = run()
  monkeypatch.setattr(
    _sparse_leaf.SparseLeaf, "gathers_flat", property(lambda self: False)
  )
  per_block = run()
  # The same entries and moments; the arithmetic may differ in the last bits
  # (XLA fuses the two programs differently, and a float32 moment one ulp
  # apart may round stochastically to the neighbouring bfloat16).
  for a, b in zip(
    jax.tree.leaves(flat), jax.tree.leaves(per_block), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a) != 0, np.asarray(b) != 0)
    rtol = 2**-7 if a.dtype == jnp.bfloat16 else 1e-6
    np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol
    )


@pytest.mark.parametrize(
  ("fraction", "expected"),
  [(0.9, 3), (float("nan"), 1), (0.0, 1), (0.05, 1), (0.34, 3)],
)
def test_active_count_is_clipped_to_one_and_k(fraction, expected):
  leaf = make_leaf(
    (6,),
    density_schedule=lambda t: jnp.float32(fraction),
    density_interval=5,
  )
  assert int(jax.jit(leaf.active_count)(step_no(7))) == expected


def test_selection_timing_and_bias_count():
  remap = make_config(density_schedule=lambda t: 0.5, density_interval=4)
  reset = make_config(
    moments="reset", density_schedule=lambda t: 0.5, density_interval=4
  )
  due = [bool(remap.selects_at(step_no(t))) for t in range(13)]
  assert [t for t, d in enumerate(due) if d] == [0, 4, 8, 10, 12]
  # "remap" counts from the first step; "reset" from the last re-selection.
  assert int(remap.bias_count(step_no(13), step_no(14))) == 14
  assert int(reset.bias_count(step_no(13), step_no(14))) == 2  # from 12
  assert int(reset.bias_count(step_no(11), step_no(12))) == 2  # from 10


def test_build_refuses_flat_indices_beyond_int32():
  config = make_config(density=0.1)
  with pytest.raises(ValueError, match="'big'.*granularity='block'"):
    _sparse_leaf.SparseLeaf.build(config, "big", (2**31,), jnp.float32, 0, 0)
  blocks = make_config(density=0.1, block_size=2**20)
  leaf = _sparse_leaf.SparseLeaf.build(
    blocks, "big", (2**31,), jnp.float32, 0, 0
  )
  # 2**11 blocks of ceil(0.1 * 2**20) = ceil(104857.6) block-local slots.
  assert leaf.layout.buffer_shape == (2**11, 104_858)
