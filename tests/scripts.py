"""Runs a script of the repository in a fresh interpreter and reads the
markdown tables it writes (used by the example and study tests)."""

import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(path: str, *args: str) -> str:
  """Runs ``<repository>/<path>`` with ``args``; returns its stdout."""
  result = subprocess.run(
    [sys.executable, str(ROOT / path), *args],
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


def load_script(path: str):
  """The module ``<repository>/<path>``, imported from its file (scripts are
  not a package); its own imports must be findable on ``sys.path``."""
  file = ROOT / path
  spec = importlib.util.spec_from_file_location(file.stem, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_study(name: str):
  """The module ``studies/<name>``."""
  return load_script(f"studies/{name}")


def assert_pngs(folder: pathlib.Path, names) -> None:
  """Each of ``names`` in ``folder`` is a PNG file."""
  for name in names:
    assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def assert_rates_and_fractions(table: dict, columns) -> None:
  """Every row of a study's table has a positive ``lr`` and, in ``columns``,
  mean ± std cells of fractions in [0, 1]."""
  for method, row in table.items():
    assert float(row["lr"]) > 0, method
    for column in columns:
      mean, std = mean_std(row[column])
      assert 0 <= mean <= 1 and 0 <= std <= 1, (method, column, row[column])
