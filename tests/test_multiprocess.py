"""Two JAX processes train NanoAdam on one mesh; one device resumes them.

The multi-host setup in miniature: two processes on this machine, joined by
``jax.distributed`` (coordinator on 127.0.0.1, CPU collectives through gloo),
4 host devices each, one 2x4 mesh over the 8. Params and state are sharded
with ``na.state_shardings`` and each process feeds its own half of every
batch. Their run must equal one process's run on 8 devices (identical
selections, floats to float32 rounding); the checkpoint both write with
Orbax at step 17 must restore in a single process on one device, onto the
shardings ``state_shardings`` gives there, and continue to step 30 like the
uninterrupted two-process run. Once with per-tensor selection and 32-bit
state, once with blocks and bfloat16 moments. The processes run
tests/multiprocess_checks.py; this file starts them, bounds their time and
always ends them.
"""

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

from tests import multiprocess_checks
from tests.conftest import run_checks_script

SCRIPT = pathlib.Path(multiprocess_checks.__file__)
REPO_ROOT = SCRIPT.parent.parent
CASES = list(multiprocess_checks.CASES)
# The two training processes take about 30 s on a quiet 2-core machine.
TRAIN_SECONDS = 300


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def child_env() -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT), env.get("PYTHONPATH", "")]
  )
  env["JAX_PLATFORMS"] = "cpu"
  return env


def tail(path: pathlib.Path, lines: int = 40) -> str:
  """The end of a log, without gloo's connection chatter."""
  text = path.read_text(errors="replace") if path.exists() else ""
  kept = [line for line in text.splitlines() if not line.startswith("[Gloo]")]
  return "\n".join(kept[-lines:])


def run_processes(commands, logs: pathlib.Path, timeout: float) -> None:
  """Runs ``commands`` side by side until all exit 0.

  Fails (``pytest.fail``) as soon as one exits with another status or
  ``timeout`` seconds pass, with each process's status and the tail of its
  stderr. Whatever happens, every process it started is killed (by its own
  id) before it returns.
  """
  processes = []
  try:
    for rank, command in enumerate(commands):
      with open(logs / f"process{rank}.log", "wb") as log:
        processes.append(
          subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
          )
        )
    deadline = time.monotonic() + timeout
    while True:
      codes = [process.poll() for process in processes]
      failed = any(code not in (None, 0) for code in codes)
      late = time.monotonic() > deadline
      if failed or late:
        reason = "a process failed" if failed else f"over {timeout:.0f} s"
        report = [
          f"process {rank} (pid {process.pid}): "
          f"{'still running, killed' if code is None else f'exit {code}'}"
          f"\n{tail(logs / f'process{rank}.log')}"
          for rank, (process, code) in enumerate(
            zip(processes, codes, strict=True)
          )
        ]
        pytest.fail(f"{reason}:\n\n" + "\n\n".join(report))
      if all(code == 0 for code in codes):
        return
      time.sleep(0.2)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
      process.wait(timeout=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The two-process run: checkpoints at step 17, results at 17 and 30."""
  directory = tmp_path_factory.mktemp("multiprocess")
  port = free_port()
  commands = [
    [
      sys.executable,
      str(SCRIPT),
      str(directory / f"train{rank}.json"),
      "train",
      str(directory),
      str(port),
      str(rank),
    ]
    for rank in range(multiprocess_checks.PROCESSES)
  ]
  run_processes(commands, directory, TRAIN_SECONDS)
  return directory


def test_two_processes_train_and_checkpoint(trained):
  for rank in range(multiprocess_checks.PROCESSES):
    report = (trained / f"train{rank}.json").read_text()
    assert f'"process": {rank}' in report and '"devices": 8' in report
  for case in CASES:
    # Each process wrote its own shards into the one checkpoint.
    checkpoint = trained / case / "step_stop"
    assert (checkpoint / "ocdbt.process_0").is_dir()
    assert (checkpoint / "ocdbt.process_1").is_dir()
    for when in ("stop", "total"):
      assert (trained / f"{case}-{when}.npz").stat().st_size > 0


@pytest.fixture(scope="module")
def reference_results(trained):
  report = run_checks_script(
    SCRIPT, str(trained / "reference.json"), "reference", str(trained)
  )
  assert report["devices"] == 8
  return report["results"]


@pytest.fixture(scope="module")
def resume_results(trained):
  report = run_checks_script(
    SCRIPT, str(trained / "resume.json"), "resume", str(trained)
  )
  assert report["devices"] == 1
  return report["results"]


@pytest.mark.parametrize("case", CASES)
def test_matches_one_process_on_eight_devices(reference_results, case):
  result = reference_results[case]
  assert result["ok"], result["error"]


@pytest.mark.parametrize("case", CASES)
def test_one_device_resumes_the_two_processes_checkpoint(resume_results, case):
  result = resume_results[case]
  assert result["ok"], result["error"]


def test_a_dying_process_fails_the_run_and_ends_the_others(tmp_path):
  """The launcher itself: one process dies, the other would run for ten
  minutes; the run fails at once with the dead one's output, and the
  survivor is killed."""
  dies = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
  lingers = [sys.executable, "-c", "import time; time.sleep(600)"]
  started = time.monotonic()
  with pytest.raises(pytest.fail.Exception) as failure:
    run_processes([lingers, dies], tmp_path, timeout=120)
  assert time.monotonic() - started < 60
  message = str(failure.value)
  assert "a process failed" in message
  assert (
    "process 1 (pid" in message and "exit 3" in message and "boom" in message
  )
  assert "process 0 (pid" in message and "still running, killed" in message
  survivor = int(re.search(r"process 0 \(pid (\d+)\)", message).group(1))
  with pytest.raises(ProcessLookupError):  # killed and reaped
    os.kill(survivor, 0)


def test_a_hanging_process_is_killed_at_the_deadline(tmp_path):
  lingers = [sys.executable, "-c", "import time; time.sleep(600)"]
  with pytest.raises(pytest.fail.Exception) as failure:
    run_processes([lingers], tmp_path, timeout=1)
  assert "over 1 s" in str(failure.value)
  assert "still running, killed" in str(failure.value)
