"""The tutorial example (examples/finetune_tutorial.py) trains and restores.

Its quick mode finetunes the real pretrained MiniLM for a few steps with
``nnx.Optimizer(model, na.nanoadam(...))``, saves the model and optimizer
with Orbax and restores them into new objects.
"""

import re

from tests.scripts import run_script


def before_after(out: str, name: str) -> tuple[float, float]:
  """The two numbers of a printed ``name  before -> after`` line."""
  match = re.search(rf"^{name}\s+([\d.]+) -> ([\d.]+)$", out, re.MULTILINE)
  assert match, out
  return float(match[1]), float(match[2])


def test_tutorial_trains_saves_and_restores(tmp_path):
  out = run_script(
    "examples/finetune_tutorial.py", "--quick", "--out", str(tmp_path)
  )
  loss_before, loss_after = before_after(out, "test loss")
  accuracy_before, accuracy_after = before_after(out, "test accuracy")
  # A fresh head starts near chance; 30 steps reach about 0.78.
  assert loss_after < loss_before - 0.05, out
  assert accuracy_after > accuracy_before + 0.1, out
  assert accuracy_after > 0.65, out
  assert "restored state equals saved: True" in out, out
  restored = float(re.search(r"restored test accuracy ([\d.]+)", out)[1])
  assert restored == accuracy_after, out
  assert "optimizer step 30," in out, out
  assert (tmp_path / "checkpoint").is_dir()
