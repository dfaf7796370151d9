"""Finding NanoAdam states inside optimizer states, and each leaf's kind."""

import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import nanoadam_jax as na
from nanoadam_jax import _state


def params():
  return {"w": jnp.linspace(-1.0, 1.0, 8), "head": jnp.ones(3)}


def labels(params):
  return {"w": "nano", "head": "adam"}


@pytest.mark.parametrize(
  "wrap",
  [
    lambda tx: tx,
    lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx),
    lambda tx: optax.multi_transform(
      {"nano": na.nanoadam(1e-2, 0.5), "adam": optax.adam(1e-3)}, labels
    ),
    lambda tx: optax.MultiSteps(tx, every_k_schedule=2),
  ],
  ids=["alone", "chain", "multi_transform", "multi_steps"],
)
def test_finds_the_one_state_in_any_optax_wrapper(wrap):
  tx = wrap(na.nanoadam(1e-2, 0.5, exclude="head"))
  found = _state.find_states(tx.init(params()))
  assert len(found) == 1 and isinstance(found[0], na.ScaleByNanoAdamState)


def test_finds_the_state_under_inject_hyperparams():
  tx = optax.inject_hyperparams(na.nanoadam, static_args=na.STATIC_ARGS)(
    learning_rate=1e-2, density=0.5
  )
  assert len(_state.find_states(tx.init(params()))) == 1


def test_finds_the_state_in_an_nnx_optimizer_and_its_nnx_state():
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  tx = na.nanoadam(1e-2, 0.5, exclude="bias")
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  for where in (optimizer, optimizer.opt_state, nnx.state(optimizer)):
    (found,) = _state.find_states(where)
    buffers = _state.buffers_by_path(found)
    assert set(buffers) == {"bias", "kernel"}
    assert buffers["kernel"].kind == "sparse"
    assert buffers["kernel"].indices.shape == (6,)
    assert buffers["bias"].kind == "dense" and buffers["bias"].indices is None
    assert buffers["bias"].mu.shape == (3,)


def test_buffers_by_path_leaves_frozen_leaves_out():
  tree = {"w": jnp.ones(4), "ids": jnp.arange(2), "head": jnp.ones(2)}
  state = na.scale_by_nanoadam(0.5, exclude="ids|head").init(tree)
  kinds = {p: b.kind for p, b in _state.buffers_by_path(state).items()}
  assert kinds == {"w": "sparse", "head": "dense"}


def test_update_names_a_state_from_another_optimizer():
  tree = params()
  for tx in (na.nanoadam(1e-2, 0.5), na.scale_by_nanoadam(0.5)):
    with pytest.raises(TypeError, match="another optimizer's init"):
      tx.update(tree, optax.adamw(1e-3).init(tree), tree)
