"""studies/finetune_minilm.py: its quick mode end to end, its resumable runs,
its settings' checks and its report's tables."""

import dataclasses

import numpy as np
import pytest

from tests.scripts import assert_pngs
from tests.scripts import assert_rates_and_fractions
from tests.scripts import load_study
from tests.scripts import mean_std
from tests.scripts import read_table
from tests.scripts import run_script


def test_finetune_minilm(tmp_path):
  """The real-model comparison's smoke run, on the real pretrained weights."""
  run_script("studies/finetune_minilm.py", "--quick", "--out", str(tmp_path))
  assert_pngs(
    tmp_path,
    (
      "minilm_lr_sweep.png",
      "minilm_accuracy_vs_forgetting.png",
      "gradient_vs_weight.png",
    ),
  )
  table = read_table((tmp_path / "minilm.md").read_text())
  assert set(table) == {
    "AdamW",
    "NanoAdam (paper's GLUE recipe)",
    "head only (probe)",
    "GaLore r=32",
    "LoRA r=8",
  }, table
  assert_rates_and_fractions(
    table, ("test acc", "similarity kept", "weights changed")
  )
  for method, row in table.items():
    for name in ("step time", "compile", "peak memory"):
      ratio = row[name].split("(")[-1].rstrip("x)")
      assert float(ratio.removesuffix("x")) > 0, (method, name, row[name])
  changed = {m: mean_std(r["weights changed"])[0] for m, r in table.items()}
  # AdamW moves every encoder weight, the paper's recipe no more than its
  # 10% buffers (one selection: mask_interval is the run's length), the
  # probe none.
  assert changed["AdamW"] > 0.99, changed
  assert 0 < changed["NanoAdam (paper's GLUE recipe)"] <= 0.15, changed
  assert changed["head only (probe)"] == 0, changed
  # GaLore's low-rank updates still reach every entry of a matrix; LoRA's
  # merged W + AB moves the adapted projections (about half the encoder).
  assert changed["GaLore r=32"] > 0.99, changed
  assert 0.3 < changed["LoRA r=8"] < 0.7, changed
  state = {m: float(r["opt state"].split()[0]) for m, r in table.items()}
  assert state["NanoAdam (paper's GLUE recipe)"] < 0.2 * state["AdamW"], state
  assert state["GaLore r=32"] < 0.2 * state["AdamW"], state
  assert state["LoRA r=8"] < 0.05 * state["AdamW"], state


def test_finetune_minilm_keeps_finished_runs(tmp_path):
  """A rerun reads each finished run back instead of training it again, and
  refuses a folder of runs made with other settings."""
  study = load_study("finetune_minilm.py")
  trained = []

  class Runner:
    cfg = study.QUICK

    def run(self, method, lr, seed, test):
      trained.append((method.name, lr, seed, test))
      return {"acc": lr + seed}

  method = study.METHODS[0]
  train = study.saved_runs(Runner(), tmp_path)
  assert train(method, 1e-3, 1, test=False) == {"acc": 1e-3 + 1}
  assert train(method, 1e-3, 1, test=True) == {"acc": 1e-3 + 1}
  again = study.saved_runs(Runner(), tmp_path)  # a new process, say
  assert again(method, 1e-3, 1, test=False) == {"acc": 1e-3 + 1}
  assert len(trained) == 2, trained
  # More seeds or methods resume the same runs; other steps do not.
  Runner.cfg = dataclasses.replace(study.QUICK, seeds=5, methods=())
  study.saved_runs(Runner(), tmp_path)
  Runner.cfg = dataclasses.replace(study.QUICK, steps=7)
  with pytest.raises(SystemExit, match="other settings"):
    study.saved_runs(Runner(), tmp_path)


def test_finetune_minilm_refuses_a_mask_interval_within_the_timed_steps():
  """The step-time column times steps 1..TIMED_STEPS as steady: a mask
  interval that re-selects among them would time re-selections too."""
  study = load_study("finetune_minilm.py")
  with pytest.raises(ValueError, match="mask_interval must exceed the 3"):
    dataclasses.replace(study.QUICK, mask_interval=study.TIMED_STEPS)
  assert dataclasses.replace(study.QUICK, mask_interval=4).mask_interval == 4


def test_gradient_table_lists_layers_in_order():
  """Twelve layers: layer 2 comes before layer 10 (not as strings sort), and
  each cell is the ratio of mean |g| on the smallest to the largest |w|."""
  study = load_study("finetune_minilm.py")
  w = np.arange(1.0, 21.0)  # 10%: the two smallest, the two largest
  pairs = {
    f"layers/{layer}/{m}": (w, np.where(w <= 2, 2.0 + layer, 1.0))
    for layer in range(12)
    for m in study.MATRICES
  }
  pairs["word_embeddings"] = (w, np.ones(20))
  lines = study.gradient_table(pairs)
  rows = [
    line for line in lines if line.startswith("| ") and "layer" not in line
  ]
  assert [row.split(" | ")[0] for row in rows] == [f"| {i}" for i in range(12)]
  assert rows[10].split(" | ")[1] == "12.00"  # (2 + 10) / 1
  assert lines[-1] == "word_embeddings: 1.00."
