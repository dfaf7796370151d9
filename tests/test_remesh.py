"""A checkpoint saved on a 2x4 mesh resumes on 4 devices and on 1.

Sparse and 8-bit optimizers keep state shaped unlike the params, and that
is where sharded checkpoints break elsewhere (bitsandbytes issue #89: under
FSDP, 8-bit Adam's state cannot be gathered into a state dict). Here a run on
8 host devices saves params and NanoAdam's state at step 7; fresh processes
with 4 devices and with 1 restore it with Orbax, onto the shardings that
``na.state_shardings`` gives for their own mesh, and train on to step 15,
across the re-selection at step 10. Each must match an uninterrupted
single-device run: identical selections, the rest to float32 rounding. The
runs live in tests/remesh_checks.py, one fresh interpreter per device count.
"""

import pathlib

import pytest

from tests import remesh_checks
from tests.conftest import run_checks_script

SCRIPT = pathlib.Path(__file__).with_name("remesh_checks.py")
CASES = list(remesh_checks.CASES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Checkpoints of every case at step 7, written on 8 devices."""
  directory = tmp_path_factory.mktemp("remesh")
  report = run_checks_script(
    SCRIPT, str(directory / "save.json"), "save", str(directory / "ckpt")
  )
  assert report["devices"] == 8
  return directory, report["results"]


@pytest.fixture(scope="module", params=[4, 1], ids=lambda n: f"{n}dev")
def resumed(request, saved):
  """The cases restored onto ``devices`` and trained to step 15."""
  directory, _ = saved
  devices = request.param
  report = run_checks_script(
    SCRIPT,
    str(directory / f"resume{devices}.json"),
    "resume",
    str(directory / "ckpt"),
    str(devices),
  )
  assert report["devices"] == devices
  return report["results"]


@pytest.mark.parametrize("case", CASES)
def test_saved_on_a_2x4_mesh(saved, case):
  result = saved[1][case]
  assert result["ok"], result["error"]


@pytest.mark.parametrize("case", CASES)
def test_resumes_on_fewer_devices_like_an_uninterrupted_run(resumed, case):
  result = resumed[case]
  assert result["ok"], result["error"]
