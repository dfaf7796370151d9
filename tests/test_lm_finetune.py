"""studies/lm_finetune.py's quick mode, end to end: what it writes."""

import math

from tests.scripts import read_table
from tests.scripts import run_script


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
