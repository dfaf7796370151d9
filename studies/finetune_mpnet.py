"""Finetuning a BERT-base-sized encoder: NanoAdam against AdamW and GaLore.

The MiniLM study (``finetune_minilm.py``) at the scale of the paper's GLUE
models: sentence-transformers' all-mpnet-base-v2 (12 layers, hidden 768,
109M weights, loaded by ``examples/mpnet.py`` from five registry packages)
finetuned with a fresh linear head on the same movie-review sentiment task,
with the same batches, schedule, seeds, similarity probe and report. The
methods: AdamW, NanoAdam at density 0.1, the paper's recipe with 16-bit
blocks, and ``optax.contrib.galore`` at ranks 32 and 128, each rate chosen
on validation from its own two-rate grid, then 3 seeds at that rate.

A train step of this size takes seconds on a 2-core CPU, so the study keeps
every finished run under ``<out>/runs/`` and a rerun with the same ``--out``
resumes where it stopped; ``--seeds`` and ``--steps`` scale it. Run
``python studies/finetune_mpnet.py --out results/mpnet``. It writes
``mpnet.md``, ``mpnet.json`` and PNG plots to ``--out``.
"""

import dataclasses

from finetune_minilm import DEMO
from finetune_minilm import QUICK
from finetune_minilm import Config
from finetune_minilm import Study
from finetune_minilm import main

METHODS = (
  "AdamW",
  "NanoAdam d=0.1",
  "NanoAdam 16-bit block (paper's recipe)",
  "GaLore r=128",
  "GaLore r=32",
)
# Two rates a method, around the MiniLM study's choices: the larger model
# wants smaller rates (AdamW's 1e-4 there, NanoAdam's 1e-3).
FULL = Config(
  model="mpnet",
  max_len=32,  # training tokens; shorter than MiniLM's 40 to halve the cost
  methods=METHODS,
  adamw_lrs=(3e-5, 1e-4),
  variant_lrs=(3e-4, 1e-3),  # NanoAdam d=0.1
  nano_lrs=(3e-4, 1e-3),  # the paper's recipe
  galore_lrs=(3e-4, 1e-3),
)
DEMO_LRS = {"AdamW": 3e-5, "NanoAdam d=0.1": 1e-3}
MPNET_STUDY = Study(
  script="studies/finetune_mpnet.py",
  doc=__doc__,
  full=FULL,
  quick=dataclasses.replace(QUICK, model="mpnet", methods=METHODS[:2]),
  demo=dataclasses.replace(DEMO, model="mpnet", methods=tuple(DEMO_LRS)),
  demo_lrs=DEMO_LRS,
)

if __name__ == "__main__":
  main(MPNET_STUDY)
