"""Refactors keep results bit for bit: pinned outputs of a few configurations.

``tests/golden/updates.npz`` holds every update and the final state of the
runs below, as main computed them before a restructuring. A change that is
meant to alter results regenerates it, and says why in its commit:

  NANOADAM_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py

The regeneration records the configurations it ran; the test compares
bits (NaN-aware), not tolerances.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nanoadam_jax as na
from nanoadam_jax import _tree

GOLDEN = pathlib.Path(__file__).parent / "golden" / "updates.npz"
STEPS = 7


def _params() -> dict:
  rng = np.random.default_rng(3)
  return {
    "body": {
      "kernel": jnp.asarray(rng.normal(size=(24, 40)), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=(40,)), jnp.float32),
    },
    "head": jnp.asarray(rng.normal(size=(40, 5)), jnp.float32),
    "ids": jnp.arange(4, dtype=jnp.int32),
  }


def _bf16_params() -> dict:
  return jax.tree.map(
    lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x,
    _params(),
  )


def _schedule(step):
  return jnp.maximum(0.25 - 0.02 * jnp.asarray(step, jnp.float32), 0.05)


def _block_schedule(step):
  return jnp.minimum(_schedule(step), 0.1)  # within density 0.1


CONFIGS = {
  "default": lambda: na.nanoadam(1e-2, 0.25, 3, exclude="head|ids"),
  "unscaled": lambda: na.scale_by_nanoadam(0.25, 3, exclude="head|ids"),
  "decay_nesterov_mask": lambda: na.nanoadam(
    1e-2,
    0.1,
    2,
    weight_decay=0.3,
    nesterov=True,
    mask={"body": {"kernel": True, "bias": False}, "head": True, "ids": False},
    exclude="head|ids",
  ),
  "schedule_reset": lambda: na.nanoadam(
    1e-2,
    0.25,
    4,
    density_schedule=_schedule,
    density_interval=2,
    moments="reset",
    exclude="ids",
  ),
  "random_top_k": lambda: na.nanoadam(
    1e-2, 0.2, 3, select="random", selection="top_k", seed=5, exclude="ids"
  ),
  "largest_approx": lambda: na.nanoadam(
    1e-2, 0.2, 3, select="largest", selection="approx", exclude="ids"
  ),
  "block_16bit": lambda: na.nanoadam(
    1e-2,
    0.1,
    3,
    granularity="block",
    block_size=64,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
    density_schedule=_block_schedule,
    density_interval=3,
    exclude="ids",
  ),
}
# Configurations run on bfloat16 params (moments stored in bfloat16).
BF16_CONFIGS = {
  "bf16_params": lambda: na.nanoadam(1e-2, 0.25, 3, exclude="head|ids"),
  "bf16_params_block": lambda: na.nanoadam(
    1e-2, 0.1, 3, granularity="block", block_size=64, exclude="ids"
  ),
}


def _run(name: str) -> dict[str, np.ndarray]:
  """Every update and the final state of ``STEPS`` steps, by key."""
  bf16 = name in BF16_CONFIGS
  tx = (BF16_CONFIGS if bf16 else CONFIGS)[name]()
  params = _bf16_params() if bf16 else _params()
  rng = np.random.default_rng(11)
  state = tx.init(params)
  update_fn = jax.jit(tx.update)
  out = {}
  for step in range(STEPS):
    grads = jax.tree.map(
      lambda p: (
        jnp.asarray(rng.normal(size=p.shape), p.dtype)
        if jnp.issubdtype(p.dtype, jnp.floating)
        else jnp.zeros(p.shape, jax.dtypes.float0)
      ),
      params,
    )
    updates, state = update_fn(grads, state, params)
    params = optax.apply_updates(params, updates)
    paths, leaves, _ = _tree.leaf_paths(updates)
    for path, leaf in zip(paths, leaves, strict=True):
      out[f"{name}:update{step}:{path}"] = np.asarray(leaf)
  for i, leaf in enumerate(jax.tree.leaves(state)):
    out[f"{name}:state:{i}"] = np.asarray(leaf)
  return out


def _bits(x: np.ndarray) -> np.ndarray:
  """The raw bytes of ``x`` with its shape and dtype in front: equality of
  these is equality bit for bit (npz cannot store bfloat16 itself)."""
  head = f"{x.dtype.name}{x.shape}".encode()
  return np.concatenate(
    [
      np.frombuffer(head, np.uint8),
      np.ascontiguousarray(x).reshape(-1).view(np.uint8),
    ]
  )


ALL = [*CONFIGS, *BF16_CONFIGS]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
  if os.environ.get("NANOADAM_REGEN_GOLDEN"):
    with jax.numpy_dtype_promotion("standard"):
      arrays = {}
      for name in ALL:
        arrays.update({k: _bits(v) for k, v in _run(name).items()})
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **arrays)
  with np.load(GOLDEN) as data:
    return {key: data[key] for key in data.files}


@pytest.mark.parametrize("name", ALL)
def test_bit_identical_to_pinned_run(golden, name):
  got = _run(name)
  pinned = {k: v for k, v in golden.items() if k.startswith(f"{name}:")}
  assert pinned, f"no pinned outputs for {name}; regenerate (see docstring)"
  assert sorted(got) == sorted(pinned)
  for key, want in pinned.items():
    np.testing.assert_array_equal(_bits(got[key]), want, err_msg=key)
