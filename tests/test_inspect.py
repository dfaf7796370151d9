"""selection_mask and describe, checked against what the updates really do."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nanoadam_jax as na


def _params():
  key = jax.random.key(0)
  return {
    "w": jax.random.normal(key, (6, 7)),
    "v": jax.random.normal(jax.random.fold_in(key, 1), (50,)),
    "norm": jnp.ones(3),
    "step": jnp.zeros((), jnp.int32),
  }


def _moved(tx, params, steps=1):
  """The state after ``steps`` updates with all-ones gradients, and a bool
  tree of the entries the last update changed."""
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return state, jax.tree.map(lambda u: np.asarray(u) != 0, updates)


@pytest.mark.parametrize(
  "options",
  [
    dict(),
    dict(granularity="block", block_size=8),
    dict(density_schedule=lambda step: 0.05, density_interval=1),
  ],
  ids=["tensor", "block", "schedule"],
)
def test_mask_is_what_the_update_changes(options):
  params = _params()
  tx = na.nanoadam(0.1, 0.2, 10, exclude="norm|step", **options)
  state, moved = _moved(tx, params, steps=2)
  mask = na.selection_mask(state, params, block_size=options.get("block_size"))
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  for path in ("w", "v", "norm", "step"):
    np.testing.assert_array_equal(mask[path], moved[path], err_msg=path)
  assert mask["norm"].all() and not mask["step"].any()
  if "density_schedule" in options:  # 5% of 50 is 3 of the 10 slots
    assert mask["v"].sum() == 3


def test_mask_inside_chains_and_partitions():
  params = _params()
  tx = optax.multi_transform(
    {
      "sparse": optax.chain(
        optax.clip_by_global_norm(1.0), na.nanoadam(0.1, 0.2)
      ),
      "frozen": optax.set_to_zero(),
    },
    {"w": "sparse", "v": "sparse", "norm": "frozen", "step": "frozen"},
  )
  state, moved = _moved(tx, params)
  mask = na.selection_mask(state, params)
  np.testing.assert_array_equal(mask["w"], moved["w"])
  assert mask["w"].sum() == 9  # ceil(0.2 * 42)
  assert not mask["norm"].any()


def test_mask_before_the_first_update_is_empty():
  params = {"w": jnp.arange(5.0)}
  mask = na.selection_mask(na.nanoadam(0.1, 0.4).init(params), params)
  assert not mask["w"].any()


def test_mask_errors():
  params = {"w": jnp.arange(20.0)}
  with pytest.raises(ValueError, match="no NanoAdam state"):
    na.selection_mask(optax.adamw(0.1).init(params), params)
  tx = na.nanoadam(0.1, 0.2, granularity="block", block_size=8)
  state = tx.init(params)
  with pytest.raises(ValueError, match="block_size"):
    na.selection_mask(state, params)
  with pytest.raises(ValueError, match="does not fit"):
    na.selection_mask(state, params, block_size=4)


def test_describe_matches_the_state():
  params = _params()
  tx = na.nanoadam(
    1e-3,
    0.1,
    exclude="norm|step",
    granularity="block",
    block_size=16,
    mu_dtype=jnp.bfloat16,
  )
  report = na.describe(tx, params)
  rows = {leaf.path: leaf for leaf in report.leaves}
  assert [rows[p].kind for p in ("w", "v", "norm", "step")] == [
    "sparse",
    "sparse",
    "dense",
    "frozen",
  ]
  # w: 42 entries in blocks of 16 -> 3 blocks of ceil(1.6) = 2 slots.
  assert rows["w"].selected == 6 and rows["w"].index_dtype == "int16"
  assert rows["w"].mu_dtype == "bfloat16" and rows["w"].nu_dtype == "float32"
  assert rows["w"].state_bytes == 6 * (2 + 2 + 4)
  assert rows["norm"].selected == 3 and rows["step"].state_bytes == 0
  state = tx.init(params)
  assert report.state_bytes == na.state_bytes(state)
  assert report.adamw_bytes == na.state_bytes(optax.adamw(1e-3).init(params))
  text = str(report)
  assert "sparse" in text and "frozen" in text and "optax.adamw" in text


def test_describe_needs_nanoadam():
  with pytest.raises(ValueError, match="no NanoAdam"):
    na.describe(optax.adamw(1e-3), {"w": jnp.zeros(3)})
