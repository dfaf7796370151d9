"""studies/compare_finetuning.py's quick mode, end to end: what it writes."""

from tests.scripts import assert_pngs
from tests.scripts import assert_rates_and_fractions
from tests.scripts import mean_std
from tests.scripts import read_table
from tests.scripts import run_script


def test_compare_finetuning(tmp_path):
  run_script("studies/compare_finetuning.py", "--quick", "--out", str(tmp_path))
  assert_pngs(
    tmp_path, ("accuracy_vs_lr.png", "forgetting.png", "weight_vs_grad.png")
  )
  table = read_table((tmp_path / "comparison.md").read_text())
  assert set(table) >= {
    "AdamW",
    "NanoAdam d=0.01",
    "NanoAdam d=0.1",
    "largest d=0.1 (ablation)",
    "random d=0.1 (ablation)",
  }, table
  assert_rates_and_fractions(
    table, ("target test acc", "source test acc", "weights changed")
  )
  for method, row in table.items():
    assert -1 <= mean_std(row["forgetting"])[0] <= 1, (method, row)
    assert int(row["opt state bytes"].split()[0]) > 0, (method, row)
    assert float(row["step ms"]) > 0, (method, row)
  # Only AdamW touches (nearly) every weight.
  adamw_changed = mean_std(table["AdamW"]["weights changed"])[0]
  sparse_changed = mean_std(table["NanoAdam d=0.01"]["weights changed"])[0]
  assert sparse_changed < adamw_changed, table
