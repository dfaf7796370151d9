"""studies/finetune_mpnet.py: its settings (the study itself runs for hours)."""

from tests.scripts import ROOT
from tests.scripts import load_study


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
