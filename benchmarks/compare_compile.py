"""Compile time of the MiniLM-shaped train step: two checkouts side by side.

A change meant to shorten compilation is measured against the code before
it, on the same machine in the same minutes: each round runs one process
per checkout, alternately (before, after, before, after, ...), and each
process compiles AdamW's train step and the other methods' with
``train_step.measure_compile`` (AdamW first, then each method), so every
figure is a ratio to AdamW compiled in the same process. The table gives
each round's ratios and the median over rounds, and XLA's peak memory of
each step, which a compile-time change must not raise.

    git worktree add /tmp/before <commit>
    python benchmarks/compare_compile.py /tmp/before . --rounds 2

Each checkout is imported from its own folder, so it needs nothing installed
beyond this project's dependencies.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

# Runs inside each checkout's process: the figures of one round, as JSON.
_ONE_ROUND = """
import json, sys
root, methods, quick = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "1"
sys.path[:0] = [root, root + "/benchmarks"]
import jax
import bert, train_step as ts
import nanoadam_jax
assert nanoadam_jax.__file__.startswith(root), nanoadam_jax.__file__
names = ["adamw"] + methods
config, batch_size, length = (
  (bert.TINY, 4, 16) if quick else (bert.MINILM, 32, 48)
)
params = ts.shapes_of(bert.init_params(config, jax.random.key(0)))
batch = ts.shapes_of(
  bert.random_batch(config, jax.random.key(1), batch_size, length)
)
txs = {n: ts.optimizer(n) for n in names}
states = {n: jax.eval_shape(tx.init, params) for n, tx in txs.items()}
result = ts.measure_compile(
  lambda n: ts.make_train_step(txs[n], config),
  lambda n: (params, states[n], batch),
  names,
  1,
)
print(json.dumps({
  n: dict(
    seconds=result["seconds"][n]["total"],
    ratio=result["ratio"][n],
    peak_mib=ts.peak_bytes(result["exe"][n]) / 2**20,
  )
  for n in names
}))
"""


def one_round(checkout: pathlib.Path, methods: str, quick: bool) -> dict:
  completed = subprocess.run(
    [sys.executable, "-c", _ONE_ROUND, str(checkout), methods, str(int(quick))],
    capture_output=True,
    text=True,
    check=False,
    cwd="/",
  )
  if completed.returncode != 0:
    raise SystemExit(f"{checkout}: {completed.stderr[-2000:]}")
  return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("before", type=pathlib.Path)
  parser.add_argument("after", type=pathlib.Path)
  parser.add_argument("--methods", default="nanoadam,recipe,galore32")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument(
    "--quick", action="store_true", help="a tiny BERT, for a smoke run"
  )
  args = parser.parse_args()
  checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
  runs = {side: [] for side in checkouts}
  for _ in range(args.rounds):
    for side, checkout in checkouts.items():
      runs[side].append(one_round(checkout, args.methods, args.quick))
      print(side, json.dumps(runs[side][-1]), flush=True)
  names = list(runs["before"][0])
  print("\n| method | before | after | peak before | peak after |")
  print("|---|---:|---:|---:|---:|")
  for name in names:
    cells = []
    for side in checkouts:
      ratios = [r[name]["ratio"] for r in runs[side]]
      seconds = [r[name]["seconds"] for r in runs[side]]
      each = ", ".join(f"{x:.2f}x" for x in ratios)
      median = statistics.median(seconds)
      cells.append(
        f"{median:.1f} s" if name == "adamw" else f"{each} ({median:.1f} s)"
      )
    for side in checkouts:
      cells.append(f"{runs[side][-1][name]['peak_mib']:.0f} MiB")
    print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
