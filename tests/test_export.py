"""Every option's training step lowers for GPU and TPU, without the hardware.

``jax.export.export(..., platforms=...)`` lowers a jitted function for
platforms this machine lacks, so a primitive without a lowering on CUDA,
ROCm or TPU (or one that lowers differently there) fails here rather than on
a user's pod. Each case exports the jitted ``init`` and the train step
(``update`` and ``optax.apply_updates``) for ``cuda``, ``rocm`` and ``tpu``,
and checks that the option changed the program. A few cases are exported for
``cpu`` as well and run from the export on this machine: they must compute
what ``jax.jit`` of the same step computes (the same selections, the floats
to float32 rounding, since XLA compiles the exported module as a call and
fuses it a little differently). The sharded case (an Explicit 2x4 mesh)
needs 8 host devices and runs in tests/sharded_checks.py, in a fresh
interpreter.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nanoadam_jax as na
from tests import sharded_checks
from tests.conftest import run_checks_script
from tests.conftest import strict_schedule
from tests.remesh_checks import assert_same_run

ACCELERATORS = ("cuda", "rocm", "tpu")
PLATFORMS = ("cpu", *ACCELERATORS)
MASK_INTERVAL = 2  # the run below re-selects at steps 0 and 2
STEPS = 3

# Options per case, on top of nanoadam(1e-2, density=0.1, mask_interval=2).
# The encoder (4608 entries) is above the size up to which "radix" sorts its
# keys, so its counting passes and compaction are lowered; the other leaves
# take the small-tensor path.
BLOCK = dict(granularity="block", block_size=1024)
BF16 = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
CASES = {
  "default": {},
  **{f"tensor-{s}": dict(selection=s) for s in na.SELECTION_BACKENDS},
  **{f"block-{s}": dict(selection=s, **BLOCK) for s in na.SELECTION_BACKENDS},
  "select-largest": dict(select="largest"),
  "select-random": dict(select="random", seed=3),
  "block-select-random": dict(select="random", seed=3, **BLOCK),
  "moments-reset": dict(moments="reset"),
  "bf16-moments-stochastic": dict(rounding="stochastic", **BF16),
  "bf16-moments-nearest": dict(rounding="nearest", **BF16),
  "float16-mu-only": dict(mu_dtype=jnp.float16),
  # The paper's storage: int16 block-local indices, bfloat16 moments, and
  # its density schedule.
  "block-bf16-schedule": dict(
    density_schedule=strict_schedule(optax.linear_schedule(0.1, 0.04, 10)),
    density_interval=MASK_INTERVAL,
    **BF16,
    **BLOCK,
  ),
  "density-schedule": dict(
    density_schedule=strict_schedule(optax.linear_schedule(0.1, 0.04, 10)),
    density_interval=1,
  ),
  "exclude": dict(exclude="norm|bias"),
  "weight-decay-mask-nesterov": dict(
    weight_decay=0.01,
    mask=lambda params: {name: name != "bias" for name in params},
    nesterov=True,
    eps_root=1e-12,
  ),
}
# Cases whose program is the default's (auto resolves to radix today).
SAME_AS_DEFAULT = {"default", "tensor-auto"}
# Cases also run on the CPU from the multi-platform export (compiling is what
# costs time here, so a few that cover the distinct code paths).
RUN_CASES = ["default", "block-bf16-schedule"]


def make_params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  shapes = {"encoder": (72, 64), "head": (64, 10), "norm": (64,), "bias": (10,)}
  return {
    name: jnp.asarray(rng.normal(size=shape), dtype)
    for name, shape in shapes.items()
  }


def make_grads(params):
  rng = np.random.default_rng(1)
  return [
    jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )
    for _ in range(STEPS)
  ]


def make_train_step(tx):
  def train_step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return train_step


def export(tx, params, platforms):
  """``tx``'s jitted init and train step, exported for ``platforms``."""
  state = jax.eval_shape(tx.init, params)
  init = jax.export.export(jax.jit(tx.init), platforms=platforms)(params)
  step = jax.export.export(jax.jit(make_train_step(tx)), platforms=platforms)(
    params, state, params
  )
  for exported in (init, step):
    assert exported.platforms == platforms, exported.platforms
    assert exported.nr_devices == 1
  # The step returns what it takes: its state's structure and types hold.
  assert step.out_tree == jax.tree.structure((params, state))
  assert step.out_avals == step.in_avals[: len(step.out_avals)]
  return init, step


def run_like_jit(tx, params):
  """Runs the export for CPU and accelerators on this machine's default
  device (the CPU here, the GPU under benchmarks/device.sh) for ``STEPS``
  steps, beside the jitted step; both must agree."""
  init, step = export(tx, params, PLATFORMS)
  jitted_step = jax.jit(make_train_step(tx))
  ran = (params, init.call(params))
  jitted = (params, jax.jit(tx.init)(params))
  for grads in make_grads(params):
    ran = step.call(*ran, grads)
    jitted = jitted_step(*jitted, grads)
  assert_same_run(ran, jitted)
  # Some entries moved, at most those of two selections of about 10%.
  moved = np.asarray(ran[0]["encoder"]) != np.asarray(params["encoder"])
  assert 0 < moved.mean() <= 0.25, moved.mean()
  return ran


def make_tx(case):
  return na.nanoadam(
    1e-2, density=0.1, mask_interval=MASK_INTERVAL, **CASES[case]
  )


@pytest.fixture(scope="module")
def default_module():
  """The text of the default configuration's exported step."""
  _, step = export(make_tx("default"), make_params(), ACCELERATORS)
  return step.mlir_module()


@pytest.mark.parametrize("case", CASES)
def test_step_lowers_for_gpu_and_tpu(case, default_module):
  _, step = export(make_tx(case), make_params(), ACCELERATORS)
  # The option reached the program: it is not the default's.
  if case not in SAME_AS_DEFAULT:
    assert step.mlir_module() != default_module


@pytest.mark.parametrize("case", RUN_CASES)
def test_exported_step_runs_like_jit(case):
  run_like_jit(make_tx(case), make_params())


def approx_top_k_calls(module: str) -> list[bool]:
  """For each ApproxTopK custom call of ``module``: is it the fallback (a
  sort-based emulation) rather than the TPU primitive?"""
  calls = [line for line in module.splitlines() if "@ApproxTopK(" in line]
  return ["is_fallback = true" in line for line in calls]


def test_approx_backend_lowers_to_the_tpu_primitive():
  """``approx_min_k`` lowers per platform: the TPU's own ApproxTopK, or a
  fallback elsewhere. The accelerators' export holds both, so it was
  lowered for TPU indeed; the CPU's holds the fallback alone."""
  tx = make_tx("tensor-approx")
  params = make_params()
  _, step = export(tx, params, ACCELERATORS)
  assert sorted(set(approx_top_k_calls(step.mlir_module()))) == [False, True]
  _, cpu = export(tx, params, ("cpu",))
  assert set(approx_top_k_calls(cpu.mlir_module())) == {True}


def test_bfloat16_params_lower_for_gpu_and_tpu():
  params = make_params(jnp.bfloat16)
  _, step = export(make_tx("default"), params, ACCELERATORS)
  new_params = step.out_avals[: len(params)]
  assert {aval.dtype for aval in new_params} == {jnp.dtype(jnp.bfloat16)}


def test_inject_hyperparams_lowers_for_gpu_and_tpu():
  """Injected hyperparameters are state, so traced inputs of the step: the
  learning rate, b1, the weight decay, and the seed of the random selection
  and of the stochastic rounding of bfloat16 moments."""
  static = ("density", "mask_interval", "exclude", "granularity", "block_size")
  static += ("select", "mu_dtype", "nu_dtype")
  make = optax.inject_hyperparams(na.nanoadam, static_args=static)
  # Optax's injected hyperparameters mix dtypes (see conftest.py).
  with jax.numpy_dtype_promotion("standard"):
    tx = make(
      learning_rate=optax.linear_schedule(1e-2, 1e-3, 10),
      density=0.1,
      mask_interval=MASK_INTERVAL,
      b1=0.8,
      weight_decay=0.01,
      exclude="norm",
      select="random",
      seed=3,
      **BF16,
      **BLOCK,
    )
    _, step = export(tx, make_params(), ACCELERATORS)
  _, state = step.out_tree.unflatten(step.out_avals)
  assert set(state.hyperparams) >= {"learning_rate", "b1", "weight_decay"}
  assert state.hyperparams["seed"].shape == ()
  assert state.hyperparams["learning_rate"].shape == ()


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("export") / "results.json"
  script = pathlib.Path(sharded_checks.__file__)
  results = run_checks_script(script, str(out), *sharded_checks.EXPORT_CHECKS)
  assert results["devices"] == 8
  assert set(results["results"]) == set(sharded_checks.EXPORT_CHECKS)
  return results["results"]


@pytest.mark.parametrize("check", sharded_checks.EXPORT_CHECKS)
def test_explicit_mesh_sharded_step_lowers_for_gpu_and_tpu(
  sharded_results, check
):
  result = sharded_results[check]
  assert result["ok"], result["error"]
