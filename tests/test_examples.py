"""Runs each example's quick mode end to end and checks what it writes."""

import math
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
  """Runs ``examples/<name>`` in a fresh interpreter; returns its stdout."""
  result = subprocess.run(
    [sys.executable, str(EXAMPLES / name), *args],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def read_table(markdown: str) -> dict[str, dict[str, str]]:
  """The first markdown table, as {first cell: {column: cell}}."""
  lines = markdown.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("|"))
  rows = []
  for line in lines[start:]:
    if not line.startswith("|"):
      break
    rows.append([cell.strip() for cell in line.strip("|").split("|")])
  header, rule, body = rows[0], rows[1], rows[2:]
  assert set(rule) == {"---"} and body, markdown
  return {row[0]: dict(zip(header, row, strict=True)) for row in body}


def mean_std(cell: str) -> tuple[float, float]:
  mean, std = (float(part) for part in cell.split("±"))
  return mean, std


def test_quickstart():
  out = run_example("quickstart.py")
  losses = [
    float(line.split()[-1]) for line in out.splitlines() if "loss" in line
  ]
  assert len(losses) >= 3 and losses[-1] < losses[0], out
  assert "weights that moved" in out and "optimizer state" in out, out


def test_compare_finetuning(tmp_path):
  run_example("compare_finetuning.py", "--quick", "--out", str(tmp_path))
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
  run_example("lm_finetune.py", "--quick", "--out", str(tmp_path))
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
  run_example("finetune_minilm.py", "--quick", "--out", str(tmp_path))
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
  # AdamW moves every encoder weight, the paper's recipe little more than
  # its 10% buffers (selections change once in the run), the probe none.
  assert changed["AdamW"] > 0.99, changed
  assert 0 < changed["NanoAdam (paper's GLUE recipe)"] <= 0.15, changed
  assert changed["head only (probe)"] == 0, changed
  state = {m: float(r["opt state"].split()[0]) for m, r in table.items()}
  assert state["NanoAdam (paper's GLUE recipe)"] < 0.2 * state["AdamW"], state
