"""benchmarks/device.sh, the GPU run, works: its dry run on the CPU.

The script runs on a GPU machine only when a session is lent one, so this
test runs its dry run (the same steps, on the CPU with tiny sizes and a few
tests) and checks the report it writes, so that the script cannot rot
between GPU runs.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "device.sh"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("device")
  if shutil.which("bash") is None or shutil.which("timeout") is None:
    pytest.skip("needs bash and coreutils' timeout")
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop("JAX_PLATFORMS", None)  # the script sets it
  completed = subprocess.run(
    ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  log = (out / "device-log.txt").read_text() if out.exists() else ""
  assert completed.returncode == 0, (
    completed.stdout[-3000:] + completed.stderr[-3000:] + log[-3000:]
  )
  return out, (out / "RESULTS-gpu.md").read_text(), log


def test_every_step_ran(dry_run):
  _, results, _ = dry_run
  assert "(dry run: CPU, tiny sizes)" in results
  for step in ("selection", "tests", "bench_step"):
    assert f"| {step} | ok |" in results, results
  assert "| install | skipped (dry run) |" in results


def test_names_the_device(dry_run):
  _, results, _ = dry_run
  assert "JAX: cpu | cpu | 1 device(s) | jax " in results


def test_reports_the_selection_table(dry_run):
  _, results, _ = dry_run
  assert "| entries | density | k | radix ms | top_k ms |" in results
  assert "| 65,536 | 0.1 | 6,554 |" in results
  assert "`selection='auto'` runs `radix` on `cpu`" in results


def test_reports_the_tests(dry_run):
  _, results, log = dry_run
  tests = results.split("## Tests", 1)[1].split("## bench_step.py", 1)[0]
  assert " passed" in tests and "failed" not in tests, tests
  assert "test_full_density_equals_adamw" not in tests  # no failure listed
  assert "nanoadam_jax from: " + str(REPO_ROOT) in log


def test_includes_bench_step_report(dry_run):
  out, results, _ = dry_run
  bench = results.split("## bench_step.py", 1)[1]
  assert "## NanoAdam step against optax.adamw" in bench
  assert "(step_ratios-gpu.png)" in bench
  assert (out / "step_ratios-gpu.png").stat().st_size > 10_000


def test_refuses_to_measure_a_cpu_as_the_gpu(tmp_path):
  """Without --dry-run on a machine without a GPU, it stops at once."""
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  completed = subprocess.run(
    ["bash", str(SCRIPT), "--out", str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert completed.returncode == 2, completed.stderr
  assert "JAX's backend is not the GPU" in completed.stderr
  assert not (tmp_path / "RESULTS-gpu.md").exists()
