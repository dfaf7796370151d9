"""The README's Python snippets run as written."""

import re
from pathlib import Path

import jax

README = Path(__file__).resolve().parent.parent / "README.md"


def runnable_snippets() -> list[str]:
  """Python blocks of the README, except sketches that elide code (...)."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
  return [block for block in blocks if "\n...\n" not in block]


def test_readme_snippets_run_in_order():
  snippets = runnable_snippets()
  assert snippets, "the README lost its quickstart"
  namespace: dict = {}
  # Optax's own schedules and inject_hyperparams are not strict-promotion
  # clean; the README shows user code, which runs under standard rules.
  with jax.numpy_dtype_promotion("standard"):
    for snippet in snippets:
      exec(compile(snippet, str(README), "exec"), namespace)
  assert "state" in namespace and "params" in namespace


def test_readme_quickstart_moves_the_smallest_entries():
  """The first example trains: its loss falls, and exactly the 10% smallest
  entries of the pretrained-looking body move."""
  namespace: dict = {}
  with jax.numpy_dtype_promotion("standard"):
    exec(compile(runnable_snippets()[0], str(README), "exec"), namespace)
  assert float(namespace["loss"]) < 0.5 * float(namespace["first_loss"])
  moved, smallest = namespace["moved"], namespace["smallest"]
  assert int(moved.sum()) == 410
  assert bool((moved == smallest).all())
  # What the README says of selection_mask: the selection in force (what
  # the next update may train, as no re-selection is due), head included.
  mask = namespace["mask"]
  assert bool((mask["body"]["kernel"] == moved).all())
  assert bool(mask["head"]["kernel"].all())
