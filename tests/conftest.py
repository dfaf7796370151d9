"""Shared fixtures: strict dtype promotion everywhere, small parameter trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def strict_dtype_promotion():
  """Any implicit int/float or float32/bfloat16 mix raises in every test."""
  with jax.numpy_dtype_promotion("strict"):
    yield


@pytest.fixture
def tree_params() -> dict[str, jax.Array]:
  """A small multi-leaf tree: a matrix, a vector, a scalar and a 3-D tensor."""
  rng = np.random.default_rng(0)
  return {
    "dense/kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
    "dense/bias": jnp.asarray(rng.normal(size=(6,)), jnp.float32),
    "scale": jnp.asarray(0.7, jnp.float32),
    "conv": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32),
  }


def random_grads(params, steps: int, seed: int = 1):
  """A list of ``steps`` gradient trees drawn independently of the params."""
  rng = np.random.default_rng(seed)
  return [
    jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
    )
    for _ in range(steps)
  ]


def strict_schedule(schedule):
  """Optax schedules mix the int32 step with floats, which strict dtype
  promotion rejects; this feeds them a float32 step instead."""
  return lambda step: schedule(jnp.asarray(step, jnp.float32))


def optax_reference():
  """Optax's own optimizers are not strict-promotion clean (``b1 ** count``
  mixes a Python float with int32), so references run under standard rules."""
  return jax.numpy_dtype_promotion("standard")
