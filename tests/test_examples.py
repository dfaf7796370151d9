"""Runs each example's quick mode end to end and checks what it prints."""

from tests.scripts import run_script


def test_quickstart():
  out = run_script("examples/quickstart.py")
  losses = [
    float(line.split()[-1]) for line in out.splitlines() if "loss" in line
  ]
  assert len(losses) >= 3 and losses[-1] < losses[0], out
  assert "weights that moved" in out and "optimizer state" in out, out
