"""benchmarks/device.sh, the GPU run, works: its dry run on the CPU.

The script runs on a GPU machine only when a session is lent one, so this
test runs its dry run (the same steps, on the CPU with tiny sizes and a few
tests) and checks the report it writes, so that the script cannot rot
between GPU runs. The dry run's bench_step.py --quick is the suite's one run
of that script, so its tables are checked here too.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "device.sh"
# The dry run's seconds for all steps. bench_step.py --quick with NanoAdam
# and GaLore r128 took 110-175 s of its 160-230 s on 2 busy CPU cores; the
# suite's other worker slows it more, so more than the GPU run's 440 s.
BUDGET_S = 540


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("device")
  if shutil.which("bash") is None or shutil.which("timeout") is None:
    pytest.skip("needs bash and coreutils' timeout")
  env = dict(os.environ, PYTHON=sys.executable, BUDGET_S=str(BUDGET_S))
  env.pop("JAX_PLATFORMS", None)  # the script sets it
  completed = subprocess.run(
    ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
    env=env,
    capture_output=True,
    text=True,
    # A minute past the budget: the last step's grace period, the report.
    timeout=BUDGET_S + 60,
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


def bench_step_sections(results: str) -> dict:
  """bench_step.py's report inside ours, as ``{heading: text under it}``."""
  bench = results.split("## bench_step.py", 1)[1]
  parts = re.split(r"^#+ (.*)$", bench, flags=re.MULTILINE)
  return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_includes_bench_step_report(dry_run):
  out, results, _ = dry_run
  bench = results.split("## bench_step.py", 1)[1]
  assert "## NanoAdam step against optax.adamw" in bench
  assert "--quick --methods nanoadam,galore128`" in bench  # as run
  assert "(step_ratios-gpu.png)" in bench
  assert (out / "step_ratios-gpu.png").stat().st_size > 10_000


def test_bench_step_times_the_single_tensor(dry_run):
  """NanoAdam's and GaLore's tables, every rank whatever --methods says."""
  _, results, _ = dry_run
  sections = bench_step_sections(results)
  nanoadam = sections["Update time, as a ratio to optax.adamw in the same run"]
  assert "| 65,536 | 0.1 |" in nanoadam and "| 262,144 | 0.1 |" in nanoadam
  galore = sections["optax.contrib.galore on the same tensor"]
  assert "| 65,536 | 32 |" in galore and "| 262,144 | 128 |" in galore


def test_bench_step_tables_the_memory(dry_run):
  """The MLP step's peaks: NanoAdam's and every GaLore rank's rows."""
  _, results, _ = dry_run
  memory = bench_step_sections(results)[
    "Peak memory of a donated, jitted training step"
  ]
  assert "| nanoadam d=0.1 |" in memory
  assert "| optax.contrib.galore r32 |" in memory
  assert "| optax.contrib.galore r128 |" in memory


def test_bench_step_runs_the_bert_step_with_its_methods(dry_run):
  """The whole BERT training step (compile, step times and peak memory) and
  the BERT-base memory rows: a column and a row for each of --methods,
  nothing for the methods it leaves out."""
  _, results, _ = dry_run
  sections = bench_step_sections(results)
  step = sections["A whole training step of a MiniLM-shaped BERT"]
  assert "| measure | optax.adamw | nanoadam d=0.1 | galore r128 |" in step
  for measure in ("compile, train step", "re-selection train step"):
    assert f"| {measure} |" in step
  base = sections["Memory of a BERT-base-shaped training step"]
  assert "| nanoadam d=0.1 | " in base and "| galore r128 | " in base
  assert "| galore r32 | " not in base
  assert "| nanoadam, the paper's recipe | " not in base


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
