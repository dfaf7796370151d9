"""The duties every Optax optimizer has: composition, jit, scan, Flax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import nanoadam_jax as na
from tests.conftest import optax_reference
from tests.conftest import random_grads

STATIC = ("density", "mask_interval", "seed", "exclude", "moments", "select")


START = np.linspace(-2.0, 2.0, 50, dtype=np.float32)
# A finetuning-shaped quadratic: the optimum moves only the ten smallest
# entries (|w| < 0.4), outwards by 0.05 so they stay the ten smallest; the
# large ones are already optimal.
TARGET = np.where(np.abs(START) < 0.4, START + 0.05 * np.sign(START), START)


def quadratic_loss(params):
  return jnp.sum((params["w"] - TARGET) ** 2)


def rosenbrock(params):
  x = params["w"]
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def scan_minimize(tx, loss, params, steps):
  def step(carry, _):
    params, state = carry
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss(params)

  (params, _), losses = jax.lax.scan(
    step, (params, tx.init(params)), length=steps
  )
  return params, losses


def test_converges_on_a_quadratic_inside_scan():
  params = {"w": jnp.asarray(START)}
  tx = na.nanoadam(0.01, density=0.2, mask_interval=5)
  final, losses = jax.jit(lambda p: scan_minimize(tx, quadratic_loss, p, 2000))(
    params
  )
  assert float(losses[0]) > 0.02
  np.testing.assert_allclose(final["w"], TARGET, atol=1e-3)


def test_converges_on_rosenbrock_inside_scan():
  # Rosenbrock needs every coordinate to move, so the full density; the
  # re-selection still runs every 7 steps inside the scan.
  params = {"w": jnp.array([-1.2, 1.0], jnp.float32)}
  tx = na.nanoadam(0.01, density=1.0, mask_interval=7)
  final, _ = jax.jit(lambda p: scan_minimize(tx, rosenbrock, p, 5000))(params)
  np.testing.assert_allclose(final["w"], 1.0, atol=1e-3)


def test_chain_after_global_norm_clipping(tree_params):
  grads = jax.tree.map(lambda g: 100.0 * g, random_grads(tree_params, 1)[0])
  chained = optax.chain(
    optax.clip_by_global_norm(1.0), na.nanoadam(0.1, density=1.0)
  )
  state = chained.init(tree_params)
  updates, _ = chained.update(grads, state, tree_params)
  # The same as NanoAdam on gradients clipped by hand.
  norm = optax.tree.norm(grads)
  clipped = jax.tree.map(lambda g: g / norm, grads)
  plain = na.nanoadam(0.1, density=1.0)
  expected, _ = plain.update(clipped, plain.init(tree_params), tree_params)
  chex.assert_trees_all_close(updates, expected, rtol=1e-5)


def test_inject_hyperparams_learning_rate(tree_params):
  tx = optax.inject_hyperparams(na.nanoadam, static_args=STATIC)(
    learning_rate=0.1, density=0.2, mask_interval=3
  )
  plain = na.nanoadam(0.1, density=0.2, mask_interval=3)
  state, plain_state = tx.init(tree_params), plain.init(tree_params)
  grads = random_grads(tree_params, 6)
  step = jax.jit(tx.update)
  for t, grad in enumerate(grads):
    if t == 3:
      state.hyperparams["learning_rate"] = jnp.asarray(0.05)
    updates, state = step(grad, state, tree_params)
    expected, plain_state = plain.update(grad, plain_state, tree_params)
    scale = 0.5 if t >= 3 else 1.0
    expected = jax.tree.map(lambda u, s=scale: s * u, expected)
    # Injected b2 is a float32 array, so 1 - b2 is rounded in float32.
    chex.assert_trees_all_close(updates, expected, rtol=2e-5)


def test_inject_hyperparams_without_static_args_names_the_fix(tree_params):
  tx = optax.inject_hyperparams(na.nanoadam)(learning_rate=0.1, density=0.2)
  with pytest.raises(TypeError, match="static_args"):
    tx.init(tree_params)


def test_multisteps_accumulates_then_steps(tree_params):
  grads = random_grads(tree_params, 4)
  tx = optax.MultiSteps(na.nanoadam(0.1, density=0.3), every_k_schedule=2)
  with optax_reference():  # MultiSteps mixes int32 and float32 itself
    state = tx.init(tree_params)
    first, state = tx.update(grads[0], state, tree_params)
    second, state = tx.update(grads[1], state, tree_params)
  chex.assert_trees_all_equal(first, jax.tree.map(jnp.zeros_like, tree_params))
  plain = na.nanoadam(0.1, density=0.3)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[0], grads[1])
  expected, _ = plain.update(mean, plain.init(tree_params), tree_params)
  chex.assert_trees_all_close(second, expected, rtol=1e-5, atol=1e-7)


def test_apply_if_finite_skips_a_nan_step(tree_params):
  tx = optax.apply_if_finite(na.nanoadam(0.1, density=0.3), 3)
  state = tx.init(tree_params)
  good = random_grads(tree_params, 1)[0]
  _, state = tx.update(good, state, tree_params)
  bad = dict(good, scale=jnp.asarray(jnp.nan, jnp.float32))
  updates, new_state = tx.update(bad, state, tree_params)
  params = optax.apply_updates(tree_params, updates)
  chex.assert_trees_all_equal(params, tree_params)
  chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1


def test_nan_gradients_propagate_without_apply_if_finite():
  params = {"w": jnp.array([0.1, 0.2, 3.0])}
  tx = na.nanoadam(0.1, density=0.7)
  updates, _ = tx.update(
    {"w": jnp.array([jnp.nan, 1.0, 1.0])}, tx.init(params), params
  )
  assert bool(jnp.isnan(updates["w"][0]))


def test_jit_with_donation_and_no_recompilation(tree_params):
  tx = na.nanoadam(0.1, density=0.2, mask_interval=2)
  traces = []

  def train_step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(train_step, donate_argnums=(0, 1))
  params = jax.tree.map(jnp.copy, tree_params)
  state = tx.init(params)
  for grads in random_grads(tree_params, 5):
    params, state = step(params, state, grads)
  assert len(traces) == 1
  assert jax.tree.map(lambda p: p.dtype, params) == jax.tree.map(
    lambda p: p.dtype, tree_params
  )


def test_state_structure_and_dtypes_are_stable(tree_params):
  tx = na.scale_by_nanoadam(density=0.2, mask_interval=2, mu_dtype=jnp.bfloat16)
  state = tx.init(tree_params)
  _, new_state = jax.jit(tx.update)(
    random_grads(tree_params, 1)[0], state, tree_params
  )
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
  assert isinstance(new_state, na.ScaleByNanoAdamState)


def test_bfloat16_params_give_bfloat16_updates():
  params = {
    "w": jnp.linspace(-1, 1, 40, dtype=jnp.bfloat16).reshape(5, 8),
    "head": jnp.ones(3, jnp.bfloat16),
  }
  tx = na.nanoadam(0.1, density=0.25, exclude="head")
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  assert updates["w"].dtype == jnp.bfloat16
  assert updates["head"].dtype == jnp.bfloat16
  assert state[0].mu["w"].dtype == jnp.bfloat16
  assert int(jnp.sum(updates["w"] != 0)) == 10


def test_init_on_shape_dtype_structs_and_state_bytes():
  shapes = {
    "encoder": jax.ShapeDtypeStruct((1000, 400), jnp.float32),
    "decoder": jax.ShapeDtypeStruct((400, 500), jnp.float32),
  }
  ours = jax.eval_shape(na.nanoadam(1e-3, density=0.1).init, shapes)
  with optax_reference():
    adamw = jax.eval_shape(optax.adamw(1e-3).init, shapes)
  assert ours[0].indices["encoder"].shape == (40_000,)
  assert ours[0].indices["encoder"].dtype == jnp.int32
  ratio = na.state_bytes(ours) / na.state_bytes(adamw)
  # Index, mu and nu buffers of 0.1 n against AdamW's mu and nu of n: 0.15.
  assert ratio == pytest.approx(0.15, abs=1e-3)


class Classifier(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.body = nnx.Linear(8, 32, rngs=rngs)
    self.norm = nnx.LayerNorm(32, rngs=rngs)
    self.head = nnx.Linear(32, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.norm(self.body(x))))


def classification_data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def cross_entropy(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_flax_nnx_optimizer_loop():
  model = Classifier(nnx.Rngs(0))
  body_before = jnp.array(model.body.kernel[...])
  optimizer = nnx.Optimizer(
    model,
    na.nanoadam(3e-2, density=0.1, mask_interval=10, exclude="head|norm"),
    wrt=nnx.Param,
  )
  x, y = classification_data()

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, x, y)) for _ in range(60)]
  assert losses[-1] < 0.7 * losses[0]
  moved = np.asarray(model.body.kernel[...] != body_before)
  # At most 10% of the body moves per selection; 6 selections over 60 steps.
  assert 0 < moved.mean() <= 0.6
  head_state = optimizer.opt_state[0].mu["head"]["kernel"]
  assert head_state[...].shape == (32, 3)  # excluded: dense AdamW


def test_flax_train_state():
  model = Classifier(nnx.Rngs(1))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  x, y = classification_data()

  def apply_fn(params, x):
    state = nnx.state(nnx.merge(graphdef, nnx.state(model, nnx.Param)))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)(x)

  state = train_state.TrainState.create(
    apply_fn=apply_fn,
    params=params,
    tx=na.nanoadam(3e-2, density=0.2, exclude="head"),
  )

  @jax.jit
  def train_step(state):
    def loss(params):
      logits = state.apply_fn(params, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    value, grads = jax.value_and_grad(loss)(state.params)
    return state.apply_gradients(grads=grads), value

  losses = []
  for _ in range(40):
    state, value = train_step(state)
    losses.append(float(value))
  assert losses[-1] < 0.8 * losses[0]
  assert int(state.step) == 40
