"""Checkpoint and resume with orbax-checkpoint, bit for bit.

A run is stopped at step 7 (after the re-selection at step 5, in the middle
of a mask interval), saved, restored into new objects built from scratch (as
a new process would), and continued; it must end exactly where an
uninterrupted run ends.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import nanoadam_jax as na
from tests.conftest import random_grads
from tests.conftest import strict_schedule

TOTAL, STOP = 12, 7

CONFIGS = {
  "remap": dict(density=0.2, mask_interval=5),
  "reset": dict(density=0.2, mask_interval=5, moments="reset"),
  "random": dict(density=0.3, mask_interval=5, select="random", seed=3),
  "schedule": dict(
    density=0.3,
    mask_interval=5,
    density_schedule=strict_schedule(optax.linear_schedule(0.3, 0.1, 12)),
    density_interval=3,
  ),
  "bfloat16_mu": dict(density=0.2, mask_interval=5, mu_dtype=jnp.bfloat16),
  # 16-bit moments with stochastic rounding: the random bits come from the
  # seed and the step, so a resumed run draws the same ones.
  "bfloat16_moments_stochastic": dict(
    density=0.25,
    mask_interval=5,
    granularity="block",
    block_size=16,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
    seed=11,
  ),
  # (blocks, k) buffers with int16 block-local indices.
  "block": dict(
    density=0.25, mask_interval=5, granularity="block", block_size=16
  ),
}


def make_tx(options):
  """Built anew for every run, as a restarted process would."""
  return na.nanoadam(0.05, weight_decay=0.01, **options)


def make_train(tx):
  """A loop over one jitted step of ``tx``, compiled on first use."""

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def train(params, state, grads):
    for grad in grads:
      params, state = step(params, state, grad)
    return params, state

  return train


def save(directory, step, params, state):
  with ocp.CheckpointManager(directory) as manager:
    manager.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(state),
      ),
    )
    manager.wait_until_finished()


def restore(directory, tx, abstract_params):
  """Restores the latest step into the structure of a fresh ``tx.init``."""
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(
          jax.eval_shape(tx.init, abstract_params)
        ),
      ),
    )
  return step, restored.params, restored.opt_state


def resume_matches_uninterrupted(tmp_path, options, params):
  grads = random_grads(params, TOTAL)
  tx = make_tx(options)
  train = make_train(tx)
  expected = train(params, tx.init(params), grads)
  stopped = train(params, tx.init(params), grads[:STOP])
  save(tmp_path / "checkpoints", STOP, *stopped)

  fresh_tx = make_tx(options)
  abstract_params = jax.eval_shape(lambda: params)
  step, restored_params, restored_state = restore(
    tmp_path / "checkpoints", fresh_tx, abstract_params
  )
  assert step == STOP
  assert isinstance(restored_state[0], na.ScaleByNanoAdamState)
  chex.assert_trees_all_equal((restored_params, restored_state), stopped)
  chex.assert_trees_all_equal_shapes_and_dtypes(restored_state, stopped[1])

  resumed = make_train(fresh_tx)(restored_params, restored_state, grads[STOP:])
  chex.assert_trees_all_equal(resumed, expected)
  assert int(resumed[1][0].count) == TOTAL


@pytest.mark.parametrize("config", CONFIGS)
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, config):
  rng = np.random.default_rng(0)
  params = {
    "dense": {"kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)},
    "conv": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32),
    "scale": jnp.asarray(0.7, jnp.float32),
  }
  resume_matches_uninterrupted(tmp_path, CONFIGS[config], params)


def test_resume_with_an_excluded_leaf(tmp_path):
  rng = np.random.default_rng(0)
  params = {
    "kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
    "norm": jnp.asarray(rng.normal(size=(6,)), jnp.float32),
  }
  # Orbax refuses zero-size arrays; absent state is an optax.MaskedNode.
  options = dict(density=0.2, mask_interval=5, exclude="norm")
  resume_matches_uninterrupted(tmp_path, options, params)


def test_same_seed_random_selection_runs_are_bit_identical():
  params = {"w": jnp.linspace(-1.0, 1.0, 42, dtype=jnp.float32).reshape(6, 7)}
  grads = random_grads(params, TOTAL)

  def run(seed):
    tx = na.nanoadam(
      0.05, density=0.3, mask_interval=3, select="random", seed=seed
    )
    return make_train(tx)(params, tx.init(params), grads)

  first, again = run(5), run(5)
  chex.assert_trees_all_equal(first, again)
  other = run(6)
  assert not np.array_equal(first[1][0].indices["w"], other[1][0].indices["w"])


class Classifier(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.body = nnx.Linear(8, 16, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.body(x)))


def make_model_and_optimizer(seed):
  model = Classifier(nnx.Rngs(seed))
  tx = na.nanoadam(3e-2, density=0.2, mask_interval=5)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, x, y):
  def loss_fn(model):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def test_nnx_optimizer_checkpoint_resume(tmp_path):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=32), jnp.int32)

  model, optimizer = make_model_and_optimizer(0)
  for _ in range(TOTAL):
    nnx_step(model, optimizer, x, y)
  expected = nnx.state((model, optimizer))

  model, optimizer = make_model_and_optimizer(0)
  for _ in range(STOP):
    nnx_step(model, optimizer, x, y)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "nnx", nnx.state((model, optimizer)))
    checkpointer.wait_until_finished()

  # A new process: build abstract objects for the target, restore, update.
  abstract = nnx.state(nnx.eval_shape(lambda: make_model_and_optimizer(1)))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / "nnx", abstract)
  model, optimizer = make_model_and_optimizer(1)
  nnx.update((model, optimizer), restored)
  assert int(optimizer.step[...]) == STOP
  assert isinstance(optimizer.opt_state[0], na.ScaleByNanoAdamState)
  for _ in range(TOTAL - STOP):
    nnx_step(model, optimizer, x, y)
  chex.assert_trees_all_equal(
    nnx.to_pure_dict(nnx.state((model, optimizer))),
    nnx.to_pure_dict(expected),
  )


def test_check_checkpoint_names_the_param_saved_with_another_density(
  tmp_path,
):
  """Restored the README's way, a state saved at density 0.25 fails inside
  Orbax with a shape error that names no param; check_checkpoint on the
  checkpoint's metadata names it first."""
  params = {"encoder": jnp.ones((64, 32)), "head": jnp.zeros((32, 4))}
  saved = na.nanoadam(1e-3, 0.25, exclude="head").init(params)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "ckpt", saved)
    checkpointer.wait_until_finished()
    metadata = checkpointer.metadata(tmp_path / "ckpt")
  same = jax.eval_shape(na.nanoadam(1e-3, 0.25, exclude="head").init, params)
  na.check_checkpoint(metadata, same)  # fits
  other = jax.eval_shape(na.nanoadam(1e-3, 0.5, exclude="head").init, params)
  with pytest.raises(ValueError, match=r"param 'encoder' holds 512 entries"):
    na.check_checkpoint(metadata, other)
  with pytest.raises(ValueError, match=r"about 0.5x this optimizer's density"):
    na.check_checkpoint(metadata, other)
  excluded = jax.eval_shape(na.nanoadam(1e-3, 0.25).init, params)
  with pytest.raises(ValueError, match="'head' is only in the restore target"):
    na.check_checkpoint(metadata, excluded)
  bf16 = jax.eval_shape(
    na.nanoadam(1e-3, 0.25, exclude="head", mu_dtype=jnp.bfloat16).init,
    params,
  )
  with pytest.raises(ValueError, match=r"float32 in the checkpoint but "):
    na.check_checkpoint(metadata, bf16)


def test_check_checkpoint_reads_an_nnx_checkpoint(tmp_path):
  """Orbax's metadata of a saved nnx.state keeps each Variable's ``value``
  as a key; a checkpoint that fits passes, one of another density names
  the kernel."""

  def create(density):
    model = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
    tx = na.nanoadam(1e-3, density, exclude="bias")
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "nnx", nnx.state(create(0.25)))
    checkpointer.wait_until_finished()
    metadata = checkpointer.metadata(tmp_path / "nnx")
  na.check_checkpoint(metadata, nnx.state(nnx.eval_shape(lambda: create(0.25))))
  with pytest.raises(ValueError, match="param 'kernel' holds 32 entries"):
    na.check_checkpoint(
      metadata, nnx.state(nnx.eval_shape(lambda: create(0.5)))
    )


def test_check_checkpoint_says_when_metadata_is_missing():
  target = jax.eval_shape(na.nanoadam(1e-3).init, {"w": jnp.ones(4)})
  with pytest.raises(ValueError, match="no array metadata.*item_handlers"):
    na.check_checkpoint(None, target)
