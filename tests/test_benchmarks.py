"""The benchmark scripts run (their numbers are not checked here).

bench_step.py runs once in the suite, inside benchmarks/device.sh's dry run:
tests/test_device_script.py checks its tables.
"""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import nanoadam_jax as na
from tests.conftest import optax_reference
from tests.scripts import load_script

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_every_train_step_method_steps_a_small_tree(monkeypatch):
  """Each of train_step.METHODS builds and takes two jitted steps (the first
  selects or refreshes, the second keeps) on a small tree with a head and a
  norm, moving the trainable weights and leaving finite values. (Under
  standard dtype promotion: AdamW, GaLore and the recipe's schedule are
  Optax's own.)"""
  monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports bert
  train_step = load_script("benchmarks/train_step.py")
  params = {
    "layer": {"kernel": jnp.ones((64, 64)) * 0.1, "norm": jnp.ones((64,))},
    "head": jnp.full((64, 2), 0.1),
  }
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  for name in train_step.METHODS:
    tx = train_step.optimizer(name)
    state = tx.init(params)
    update = jax.jit(tx.update)
    moved = params
    with optax_reference():
      for _ in range(2):
        updates, state = update(grads, state, moved)
        moved = optax.apply_updates(moved, updates)
    for path, value in jax.tree_util.tree_leaves_with_path(moved):
      assert bool(jnp.isfinite(value).all()), (name, path)
    kernel_moved = moved["layer"]["kernel"] != params["layer"]["kernel"]
    assert bool(kernel_moved.any()), name
    if name in ("nanoadam", "recipe"):  # only its selected entries
      block = train_step.RECIPE["block_size"] if name == "recipe" else None
      selected = na.selection_mask(state, params, block_size=block)
      kernel_selected = selected["layer"]["kernel"]
      assert not bool((kernel_moved & ~kernel_selected).any()), name
      assert float(kernel_selected.mean()) < 0.11, name  # density 0.1


def test_train_step_command_line_picks_methods_and_adds_memory():
  """train_step.py alone: --methods picks the columns beside AdamW (GaLore
  r32 only here; device.sh's dry run, tests/test_device_script.py, runs r128
  through bench_step.py and the same code),
  --memory adds the BERT-base memory table and --compile-only leaves out the
  step times."""
  script = BENCHMARKS / "train_step.py"
  completed = subprocess.run(
    [
      sys.executable,
      str(script),
      "--quick",
      "--methods=galore32",
      "--memory",
      "--compile-only",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "| XLA peak memory, train step |" in completed.stdout
  assert "| measure | optax.adamw | galore r32 |" in completed.stdout
  assert "| optimizer | optimizer state | XLA step peak |" in completed.stdout
  assert "| galore r32 | " in completed.stdout
  assert "| compile, train step |" in completed.stdout
  assert "steady train step" not in completed.stdout
  assert "nanoadam" not in completed.stdout.split("| measure |")[1]


def test_compare_compile_tables_two_checkouts():
  """compare_compile.py on this checkout against itself, a tiny BERT: a row
  per method with each round's ratio to AdamW and both peaks."""
  script = BENCHMARKS / "compare_compile.py"
  root = str(BENCHMARKS.parent)
  completed = subprocess.run(
    [sys.executable, str(script), root, root, "--quick", "--rounds", "1"]
    + ["--methods", "galore32"],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  table = completed.stdout.split("| method |", 1)[1]
  assert table.startswith(" before | after | peak before | peak after |")
  row = next(line for line in table.splitlines() if "| galore32 |" in line)
  cells = [cell.strip() for cell in row.strip("|").split("|")]
  assert cells[1].endswith(" s)") and cells[1].split("x")[0][0].isdigit()
  assert cells[3] == cells[4] and cells[3].endswith(" MiB"), cells
