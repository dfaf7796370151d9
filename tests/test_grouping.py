"""Tests for `nanoadam_jax._grouping` and the grouped re-selection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nanoadam_jax as na
from nanoadam_jax import _grouping
from nanoadam_jax import _sparse_leaf
from tests.conftest import random_grads
from tests.conftest import strict_schedule
from tests.test_sparse_leaf import make_config


def test_size_classes_stay_within_the_ratio():
  sizes = [384, 11_720_448, 147_456, 589_824, 196_608, 1536, 768, 147_456]
  classes = _grouping.size_classes(sizes)
  assert sorted(j for c in classes for j in c) == list(range(len(sizes)))
  for members in classes:
    assert max(sizes[j] for j in members) <= 4 * min(sizes[j] for j in members)
  # MiniLM's sparse sizes: the embedding, the matrices, the vectors.
  assert [sorted(sizes[j] for j in c) for c in classes] == [
    [11_720_448],
    [147_456, 147_456, 196_608, 589_824],
    [384, 768, 1536],
  ]


def test_map_leaves_runs_fn_per_leaf():
  inputs = [lambda i=i: jnp.full((5,), float(i)) for i in range(4)]
  carried = [(jnp.arange(3) * i, jnp.float32(i)) for i in range(4)]
  fn = lambda x, c: (c[0] + x[:3].astype(jnp.int32), c[1] * 2 + x.sum())
  got = _grouping.map_leaves(fn, inputs, carried)
  for i, (a, b) in enumerate(got):
    want_a, want_b = fn(inputs[i](), carried[i])
    np.testing.assert_array_equal(a, want_a)
    np.testing.assert_array_equal(b, want_b)


# Sizes within a factor 4 (one padded group), two vectors (in blocks of 16:
# one block each, a padded group), and an excluded leaf.
PARAMS = {
  "a": np.random.default_rng(0).normal(size=(40,)),
  "b": np.random.default_rng(1).normal(size=(7, 10)),
  "c": np.random.default_rng(2).normal(size=(130,)),
  "d": np.random.default_rng(3).normal(size=(6,)),
  "e": np.random.default_rng(5).normal(size=(12,)),
  "norm": np.random.default_rng(4).normal(size=(8,)),
}


def _run(tx, steps=9):
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS)
  state = tx.init(params)
  # A fresh function: jax.jit(tx.update) would reuse an earlier trace.
  update = jax.jit(lambda g, s, p: tx.update(g, s, p))
  history = []
  for grads in random_grads(params, steps):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append((updates, state))
  return history


@pytest.mark.parametrize(
  "options",
  [
    dict(),
    dict(select="largest", moments="reset"),
    dict(select="random"),
    dict(
      density_schedule=strict_schedule(optax.linear_schedule(0.5, 0.2, 6)),
      density_interval=2,
    ),
    dict(
      weight_decay=0.1,
      mask=lambda p: {k: k != "a" for k in p},
      mu_dtype=jnp.bfloat16,
    ),
    dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    dict(
      granularity="block",
      block_size=16,
      mu_dtype=jnp.bfloat16,
      nu_dtype=jnp.bfloat16,
    ),
    dict(
      granularity="block",
      block_size=16,
      density_schedule=strict_schedule(optax.linear_schedule(0.5, 0.2, 6)),
      density_interval=2,
    ),
  ],
  ids=[
    "smallest",
    "largest-reset",
    "random",
    "schedule",
    "decay-mask",
    "16bit-moments",
    "16bit-blocks",
    "schedule-blocks",
  ],
)
def test_grouped_update_equals_leaf_by_leaf(monkeypatch, options):
  """Grouped re-selection and grouped Adam steps give each leaf what it
  gets alone: the same selection, and values to float32 rounding."""
  tx = na.nanoadam(
    0.05, density=0.5, mask_interval=3, exclude="norm", **options
  )
  # In blocks of 16, "a", "b" and "c" have 3, 5 and 9 blocks: chunks of 3
  # blocks cut across leaves, and the last has a row of padding.
  monkeypatch.setattr(_grouping, "_CHUNK_N", 3 * 16)
  grouped = _run(tx)
  # More than one device: every leaf re-selects alone.
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  alone = _run(tx)
  for (updates, state), (want_updates, want_state) in zip(
    grouped, alone, strict=True
  ):
    for got, want in zip(
      jax.tree.leaves(state[0].indices),
      jax.tree.leaves(want_state[0].indices),
      strict=True,
    ):
      np.testing.assert_array_equal(got, want)
    for got, want in zip(
      jax.tree.leaves((updates, state[0].mu, state[0].nu)),
      jax.tree.leaves((want_updates, want_state[0].mu, want_state[0].nu)),
      strict=True,
    ):
      if got.dtype == jnp.bfloat16:
        # A float32 moment one ulp apart may round stochastically to the
        # other neighbour; a wrong rounding key or position would change
        # about half of them.
        assert np.mean(np.asarray(got != want)) <= 0.05
      else:
        # XLA:CPU computes a vector loop's tail with scalar code, a few
        # ulps apart, and a group moves entries into and out of tails; a
        # moment near zero (a difference of terms) keeps its terms' ulps.
        scale = np.max(np.abs(np.asarray(want, np.float64)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def _abstract_leaves(shapes):
  """Sparse leaves of ``(config, shape, dtype)``, with their params' and
  buffers' shapes: what the grouping functions take."""
  leaves = [
    _sparse_leaf.SparseLeaf.build(c, f"p{j}", shape, dtype, j, j)
    for j, (c, shape, dtype) in enumerate(shapes)
  ]
  params = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
  buffers = [
    tuple(jax.ShapeDtypeStruct(b.shape, b.dtype) for b in leaf.init())
    for leaf in leaves
  ]
  return leaves, params, buffers


def test_selection_groups_split_by_size_dtype_and_layout():
  config = make_config(density=0.5)
  blocks = make_config(density=0.5, block_size=16)
  shapes = [  # (config, shape, dtype)
    (config, (40,), jnp.float32),  # 0: with 2 and 3
    (config, (2_000,), jnp.float32),  # 1: over 4x the others: alone
    (config, (7, 10), jnp.float32),  # 2
    (config, (130,), jnp.float32),  # 3
    (config, (70,), jnp.bfloat16),  # 4: another dtype
    (blocks, (64,), jnp.float32),  # 5: blocks group, whatever their
    (blocks, (64,), jnp.float32),  # 6   number and width
    (blocks, (80,), jnp.float32),  # 7
    (config, (2**20 + 1,), jnp.float32),  # 8: too large to stack
    (config, (2**20,), jnp.float32),  # 9: the largest that groups
    (blocks, (8,), jnp.float32),  # 10: in one short block
    (blocks, (12,), jnp.float32),  # 11
    (blocks, (2**20 + 16,), jnp.float32),  # 12: large, in blocks
    (blocks, (16,), jnp.bfloat16),  # 13: another dtype
  ]
  groups = _grouping.selection_groups(*_abstract_leaves(shapes))
  assert sorted(map(sorted, groups)) == [
    [0, 2, 3],
    [1],
    [4],
    [5, 6, 7, 10, 11, 12],
    [8],
    [9],
    [13],
  ]


def test_step_groups_split_by_config_dtype_width_and_rounding():
  bf16 = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  config = make_config(density=0.5, **bf16)
  undecayed = make_config(density=0.5, **bf16)  # another config
  blocks = make_config(density=0.5, block_size=16, **bf16)
  plain = make_config(density=0.5)  # 32-bit moments: no rounding
  shapes = [  # (config, shape, dtype)
    (config, (40,), jnp.float32),  # 0: with 1 and 2 (any sizes)
    (config, (2_000,), jnp.float32),  # 1
    (config, (7, 10), jnp.float32),  # 2
    (undecayed, (40,), jnp.float32),  # 3: another config
    (config, (70,), jnp.bfloat16),  # 4: another dtype
    (blocks, (64,), jnp.float32),  # 5: blocks of one width, with 7
    (config, (2**20,), jnp.float32),  # 6: the group would pass 2**20
    (blocks, (80,), jnp.float32),  # 7
    (blocks, (8,), jnp.float32),  # 8: one short block, 4 wide
    (config, (2**20 + 1,), jnp.float32),  # 9: too large: alone
    (plain, (40,), jnp.float32),  # 10: not rounded: alone
    (plain, (40,), jnp.float32),  # 11
  ]
  groups = _grouping.step_groups(*_abstract_leaves(shapes))
  assert sorted(map(sorted, groups)) == [
    [0, 1, 2],
    [3],
    [4],
    [5, 7],
    [6],
    [8],
    [9],
    [10],
    [11],
  ]


def _gathered(leaves, per_block=()):
  """What `write_groups` reads of each leaf's step: flat positions (None
  for the leaves in ``per_block``) into rows as wide as the leaf's."""
  return [
    _sparse_leaf.Gathered(
      None,
      None,
      None,
      None
      if j in per_block
      else jax.ShapeDtypeStruct(leaf.layout.buffer_shape, jnp.uint32),
      leaf.layout.row_size,
    )
    for j, leaf in enumerate(leaves)
  ]


def test_write_groups_split_by_dtype_addressing_and_size():
  config = make_config(density=0.5)
  blocks = make_config(density=0.5, block_size=16)
  shapes = [  # (config, shape, dtype)
    (config, (40,), jnp.float32),  # 0: with 2 and 3 (any layout)
    (config, (70,), jnp.bfloat16),  # 1: another dtype
    (config, (7, 10), jnp.float32),  # 2
    (blocks, (64,), jnp.float32),  # 3
    (blocks, (80,), jnp.float32),  # 4: addressed per block: alone
    (config, (2**18,), jnp.float32),  # 5: the largest that groups
    (config, (2**18 + 1,), jnp.float32),  # 6: larger: alone
  ]
  leaves, params, _ = _abstract_leaves(shapes)
  groups = _grouping.write_groups(leaves, params, _gathered(leaves, [4]))
  assert sorted(map(sorted, groups)) == [[0, 2, 3, 5], [1], [4], [6]]


def test_write_groups_add_up_to_the_group_size():
  config = make_config(density=0.5)
  leaves, params, _ = _abstract_leaves([(config, (2**18,), jnp.float32)] * 6)
  groups = _grouping.write_groups(leaves, params, _gathered(leaves))
  assert groups == [[0, 1, 2, 3], [4, 5]]  # 2**20 entries at most
