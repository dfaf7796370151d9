"""State byte counts."""

import jax
import jax.numpy as jnp
import optax

import nanoadam_jax as na
from tests.conftest import optax_reference


def test_state_bytes_counts_arrays_and_shape_structs():
  tree = {
    "a": jnp.zeros((10, 3)),
    "b": jax.ShapeDtypeStruct((7,), jnp.bfloat16),
    "c": None,
    "d": 3,
  }
  assert na.state_bytes(tree) == 10 * 3 * 4 + 7 * 2


def test_state_bytes_of_nanoadam_against_adamw_per_density():
  params = {"w": jax.ShapeDtypeStruct((1000, 1000), jnp.float32)}
  with optax_reference():
    adamw = na.state_bytes(jax.eval_shape(optax.adamw(1e-3).init, params))
  for density, expected in ((0.01, 0.015), (0.1, 0.15), (1.0, 1.5)):
    tx = na.nanoadam(1e-3, density=density)
    ours = na.state_bytes(jax.eval_shape(tx.init, params))
    # k int32 indices + k mu + k nu against 2n floats: 1.5 * density.
    assert abs(ours / adamw - expected) < 1e-4, density


def test_excluded_leaves_cost_what_adamw_costs():
  params = {"w": jnp.ones((100, 10)), "norm": jnp.ones(10)}
  tx = na.scale_by_nanoadam(density=0.1, exclude="norm")
  state = tx.init(params)
  assert na.state_bytes(state.mu["norm"]) == 10 * 4
  assert na.state_bytes(state.indices["norm"]) == 0
  assert na.state_bytes(state.mu["w"]) == 100 * 4
