"""selection_mask and describe, checked against what the updates really do."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

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


def test_selection_mask_reads_nnx_state_of_an_optimizer():
  model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, na.nanoadam(1e-2, 0.25, exclude="bias"), wrt=nnx.Param
  )
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  optimizer.update(model, grads)
  params = nnx.state(model, nnx.Param)
  from_state = na.selection_mask(nnx.state(optimizer), params)
  from_object = na.selection_mask(optimizer.opt_state, params)
  for a, b in zip(
    jax.tree.leaves(from_state), jax.tree.leaves(from_object), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  kernel = jax.tree.leaves(from_state)[1]
  assert int(kernel.sum()) == 6  # a quarter of 24


def test_selection_mask_refuses_two_nanoadams_on_one_leaf():
  params = {"w": jnp.linspace(-1.0, 1.0, 8)}
  tx = optax.chain(na.scale_by_nanoadam(0.5), na.nanoadam(1e-2, 0.25))
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  with pytest.raises(ValueError, match="both train 'w'"):
    na.selection_mask(state, params)
  # Each NanoAdam's own state answers.
  assert int(na.selection_mask(state[0], params)["w"].sum()) == 4
  assert int(na.selection_mask(state[1], params)["w"].sum()) == 2


def test_selection_mask_names_a_param_missing_from_params():
  params = {"w": jnp.ones(4), "head": jnp.ones(2)}
  state = na.nanoadam(1e-2, 0.5).init(params)
  with pytest.raises(ValueError, match="'head', which `params` lacks"):
    na.selection_mask(state, {"w": params["w"]})


def test_describe_counts_another_transformations_leaf_as_other():
  params = {"w": jnp.zeros((10, 10)), "head": jnp.zeros(10)}
  tx = optax.multi_transform(
    {"nano": na.nanoadam(1e-3, 0.1), "adam": optax.adam(1e-3)},
    {"w": "nano", "head": "adam"},
  )
  description = na.describe(tx, params)
  kinds = {leaf.path: leaf.kind for leaf in description.leaves}
  assert kinds == {"w": "sparse", "head": "other"}
  text = str(description)
  rows = sum(leaf.state_bytes for leaf in description.leaves)
  other = description.state_bytes - rows
  assert other >= 80  # Adam's two moments of the head, and the counts
  assert f"other transformations): {other:,} bytes" in text
