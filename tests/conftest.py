"""Shared fixtures: strict dtype promotion everywhere, small parameter trees;
one compilation cache for the whole run."""

import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Set by the process that starts the run, for the pytest-xdist workers it
# starts afterwards (they inherit its environment).
_RUN_CACHE_ENV = "NANOADAM_JAX_TEST_RUN_CACHE"


def _share_compilations_within_the_run() -> None:
  """Many tests jit the same programs (the same update on the same small
  tree, with other data): JAX's persistent compilation cache, in a folder
  made for this run and shared by its workers, compiles each once. Tested
  on test_nanoadam.py and test_optax_common.py: 286 s of CPU instead of
  361 s. The folder is new for every run, so a run never reads what an
  earlier one compiled (the suite behaves the same locally and in a fresh
  CI clone), and the process that made it removes it at exit. The
  multi-device checks (:func:`run_checks_script`) share it too; the
  benchmarks and studies the tests run do not: they time compilation."""
  path = os.environ.get(_RUN_CACHE_ENV)
  if path is None:
    path = tempfile.mkdtemp(prefix="nanoadam-jax-tests-")
    os.environ[_RUN_CACHE_ENV] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
  jax.config.update("jax_compilation_cache_dir", path)
  # Every compilation, not only those over a second.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


_share_compilations_within_the_run()


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


def run_checks_script(script: pathlib.Path, *args: str) -> dict:
  """Runs a checks script of tests/ in a fresh interpreter; its JSON report.

  The host platform splits into several CPU devices only when ``XLA_FLAGS``
  says so before JAX starts, which this process, where JAX already runs,
  cannot do; the script sets the flag itself. Its first argument is the path
  of the JSON report it writes.
  """
  out = pathlib.Path(args[0])
  repo_root = pathlib.Path(__file__).resolve().parent.parent
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
    [str(repo_root), env.get("PYTHONPATH", "")]
  )
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = os.environ[_RUN_CACHE_ENV]
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  completed = subprocess.run(
    [sys.executable, str(script), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert completed.returncode == 0, completed.stderr[-4000:]
  return json.loads(out.read_text())
