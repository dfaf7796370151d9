"""The wheel as a user gets it: built, installed into a clean virtual
environment with only the declared dependencies, imported, and run.

Needs the package registry (the build backend and the dependencies are
installed from it; pip's cache makes repeated runs quick). Without network,
deselect it: ``pytest -m "not network"``.
"""

import email
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# One update in the installed package, from a folder outside the repository.
ONE_UPDATE = """
import jax.numpy as jnp
import optax
import nanoadam_jax as na

assert "site-packages" in na.__file__, na.__file__
params = {"w": jnp.arange(1.0, 11.0)}
tx = na.nanoadam(0.1, density=0.2)
updates, _ = tx.update({"w": jnp.ones(10)}, tx.init(params), params)
moved = optax.apply_updates(params, updates)["w"] != params["w"]
print(na.__version__, [int(i) for i in jnp.flatnonzero(moved)])
"""


def run(*command: str, cwd: pathlib.Path) -> str:
  result = subprocess.run(
    command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
  )
  assert result.returncode == 0, (command, result.stderr[-3000:])
  return result.stdout


# Built from a copy, so that setuptools' build/ and *.egg-info folders stay
# out of the working tree.
LEFT_BEHIND = shutil.ignore_patterns(
  ".git", ".venv*", "build", "dist", "*.egg-info", "_build", "__pycache__",
  ".*_cache", ".hypothesis", "demo-results",
)  # fmt: skip


@pytest.mark.network
def test_wheel_installs_into_a_clean_venv_and_trains(tmp_path):
  source = tmp_path / "source"
  shutil.copytree(REPO, source, ignore=LEFT_BEHIND)
  run(
    sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
    "--wheel-dir", str(tmp_path / "dist"), cwd=tmp_path,
  )  # fmt: skip
  (wheel,) = (tmp_path / "dist").glob("nanoadam_jax-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    (info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
    metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
    license_text = archive.read(f"{info}/licenses/LICENSE").decode()
  assert "Apache License" in license_text and "Version 2.0" in license_text
  assert metadata["License-Expression"] == "Apache-2.0"
  assert "Typing :: Typed" in metadata.get_all("Classifier")
  assert "nanoadam_jax/py.typed" in names
  # Only the package: no tests, examples or docs in the wheel.
  assert {name.split("/")[0] for name in names} == {"nanoadam_jax", info}

  # A venv without pip of its own: this pip installs into it (--python),
  # without byte-compiling the dependencies (most of an install's time).
  venv = tmp_path / "venv"
  run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
  python = str(venv / "bin" / "python")
  pip = (sys.executable, "-m", "pip", "--python", python)
  run(*pip, "install", "--no-compile", "--quiet", str(wheel), cwd=tmp_path)
  listed = run(*pip, "list", "--format=freeze", cwd=tmp_path)
  installed = {line.split("==")[0].lower() for line in listed.split()}
  assert {"nanoadam-jax", "jax", "optax", "flax"} <= installed, installed
  # The declared dependencies only, none of the extras'.
  for extra in ("pytest", "sphinx", "scikit-learn", "matplotlib", "tqdm"):
    assert extra not in installed, installed
  out = run(python, "-c", ONE_UPDATE, cwd=tmp_path)
  # density 0.2 of 10 entries: the two smallest, 1.0 and 2.0, move.
  assert out.split() == ["0.1.0", "[0,", "1]"], out
