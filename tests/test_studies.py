"""Runs each study's quick mode end to end and checks what it writes."""

import dataclasses
import importlib.util
import math

import numpy as np
import pytest

from tests.scripts import ROOT
from tests.scripts import mean_std
from tests.scripts import read_table
from tests.scripts import run_script


def test_compare_finetuning(tmp_path):
  run_script("studies/compare_finetuning.py", "--quick", "--out", str(tmp_path))
  for png in ("accuracy_vs_lr.png", "forgetting.png", "weight_vs_grad.png"):
    assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
  table = read_table((tmp_path / "comparison.md").read_text())
  assert set(table) >= {
    "AdamW",
    "NanoAdam d=0.01",
    "NanoAdam d=0.1",
    "largest d=0.1 (ablation)",
    "random d=0.1 (ablation)",
  }, table
  for method, row in table.items():
    assert float(row["lr"]) > 0, method
    for column in ("target test acc", "source test acc", "weights changed"):
      mean, std = mean_std(row[column])
      assert 0 <= mean <= 1 and 0 <= std <= 1, (method, column, row[column])
    assert -1 <= mean_std(row["forgetting"])[0] <= 1, (method, row)
    assert int(row["opt state bytes"].split()[0]) > 0, (method, row)
    assert float(row["step ms"]) > 0, (method, row)
  # Only AdamW touches (nearly) every weight.
  adamw_changed = mean_std(table["AdamW"]["weights changed"])[0]
  sparse_changed = mean_std(table["NanoAdam d=0.01"]["weights changed"])[0]
  assert sparse_changed < adamw_changed, table


def test_lm_finetune(tmp_path):
  run_script("studies/lm_finetune.py", "--quick", "--out", str(tmp_path))
  table = read_table((tmp_path / "lm_finetune.md").read_text())
  assert set(table) == {"pretrained", "AdamW", "NanoAdam d=0.1"}, table
  for method, row in table.items():
    for column in ("target test", "source test"):
      loss = float(row[column])
      assert math.isfinite(loss) and 0 < loss < 9, (method, column, loss)
  for method in ("AdamW", "NanoAdam d=0.1"):
    row = table[method]
    assert 0 <= float(row["params changed"]) <= 1, row
    assert int(row["opt state bytes"].split()[0]) > 0, row
  nano = int(table["NanoAdam d=0.1"]["opt state bytes"].split()[0])
  assert nano < int(table["AdamW"]["opt state bytes"].split()[0]), table


def test_finetune_minilm(tmp_path):
  """The real-model comparison's smoke run, on the real pretrained weights."""
  run_script("studies/finetune_minilm.py", "--quick", "--out", str(tmp_path))
  for png in (
    "minilm_lr_sweep.png",
    "minilm_accuracy_vs_forgetting.png",
    "gradient_vs_weight.png",
  ):
    assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
  table = read_table((tmp_path / "minilm.md").read_text())
  assert set(table) == {
    "AdamW",
    "NanoAdam (paper's GLUE recipe)",
    "head only (probe)",
    "GaLore r=32",
    "LoRA r=8",
  }, table
  for method, row in table.items():
    assert float(row["lr"]) > 0, method
    for name in ("test acc", "similarity kept", "weights changed"):
      mean, std = mean_std(row[name])
      assert 0 <= mean <= 1 and 0 <= std <= 1, (method, name, row[name])
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


def load_study(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "studies" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


def test_finetune_mpnet_settings_name_known_methods_and_grids(monkeypatch):
  """The MPNet study runs the MiniLM study's code at another size: its
  settings name methods that exist and give each a two-rate grid. (Even its
  quick mode compiles a 109M-parameter step per method: too slow here.)"""
  monkeypatch.syspath_prepend(str(ROOT / "studies"))
  study = load_study("finetune_mpnet.py").MPNET_STUDY
  known = {
    method.name: method for method in load_study("finetune_minilm.py").METHODS
  }
  for cfg in (study.full, study.quick, study.demo):
    assert cfg.model == "mpnet", cfg
    assert set(cfg.methods) <= set(known), cfg.methods
  for name in study.full.methods:
    assert len(getattr(study.full, known[name].grid)) == 2, name
  assert set(study.demo_lrs) == set(study.demo.methods)
