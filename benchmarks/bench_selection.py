"""Times NanoAdam's bottom-k selection backends against a full sort.

``selection="auto"`` picks one exact backend per platform
(``nanoadam_jax._selection._AUTO_BACKEND``). This script measures the
candidates on whatever device JAX runs on, at the single-tensor sizes of
``bench_step.py``: the ``"radix"`` and ``"top_k"`` backends, ``"approx"``
(:func:`jax.lax.approx_min_k`, not exact), and a full stable sort of the
scores, each jitted with the ``|theta|`` scores computed inside, as a
re-selection computes them. It also checks that the exact backends and the
sort return the same indices, and reports the recall of ``"approx"``.

  python benchmarks/bench_selection.py                 # the full table
  python benchmarks/bench_selection.py --quick         # a smoke run
  python benchmarks/bench_selection.py --out sel.md    # also write the table
  python benchmarks/bench_selection.py --blocks        # the recipe's blocks

``--blocks`` times instead what a re-selection of the paper's recipe runs:
bottom-k of every 4096-entry block of the MiniLM-shaped BERT's sparse leaves
(``train_step.py``), one vmapped selection per leaf, all leaves in one jitted
program, by the small-row path (``_selection._small_row_lowest_k``) against
the stable sort of keys and indices it replaced, interleaved in one process.

Prints a Markdown table (milliseconds per call, median of timed calls after
a warm-up; compile seconds) and the fastest exact backend at each size.
"""

import argparse
import re
import statistics
import time
from pathlib import Path

import bert
import jax
import jax.numpy as jnp
import numpy as np
import train_step
from jax import lax

import nanoadam_jax as na
from nanoadam_jax import _selection

# The single-tensor sizes and densities of bench_step.py's full run.
SIZES = [2**20, 2**22, 2**24, 2**26]
DENSITIES = [0.01, 0.1]
BACKENDS = ("radix", "top_k", "approx", "sort")
EXACT = ("radix", "top_k", "sort")


def sort_lowest_k(scores: jax.Array, k: int) -> jax.Array:
  """The ``k`` lowest scores' indices by a full stable sort, ascending."""
  index = jnp.arange(scores.shape[0], dtype=jnp.int32)
  _, order = lax.sort((scores, index), num_keys=1, is_stable=True)
  return jnp.sort(order[:k])


def selector(backend: str, k: int):
  """A jitted ``theta -> (k,) indices`` for one backend."""
  if backend == "sort":
    return jax.jit(lambda theta: sort_lowest_k(jnp.abs(theta), k))
  return jax.jit(
    lambda theta: na.lowest_k_indices(jnp.abs(theta), k, selection=backend)
  )


def time_calls(fn, x, budget_s: float, max_calls: int) -> float:
  """Median milliseconds of ``fn(x)`` over calls that fit ``budget_s``."""
  jax.block_until_ready(fn(x))  # warm-up, after the compile
  times = []
  start = time.perf_counter()
  while len(times) < max_calls:
    began = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - began)
    if len(times) >= 3 and time.perf_counter() - start > budget_s:
      break
  return 1e3 * statistics.median(times)


def measure(n: int, density: float, budget_s: float) -> dict:
  """Compile seconds, call milliseconds and indices of every backend."""
  theta = jax.random.normal(jax.random.key(n), (n,), jnp.float32)
  k = max(1, int(np.ceil(density * n)))
  row = {"n": n, "density": density, "k": k}
  indices = {}
  for backend in BACKENDS:
    fn = selector(backend, k)
    began = time.perf_counter()
    compiled = fn.lower(theta).compile()
    row[f"{backend}_compile_s"] = time.perf_counter() - began
    indices[backend] = np.asarray(compiled(theta))
    row[f"{backend}_ms"] = time_calls(compiled, theta, budget_s, 50)
  for backend in EXACT[1:]:
    # The exact backends must agree, or their timings compare nothing.
    np.testing.assert_array_equal(
      indices[backend], indices["radix"], err_msg=f"{backend} vs radix, n={n}"
    )
  approx = indices["approx"]
  real = approx[approx < n]
  row["approx_recall"] = np.intersect1d(real, indices["radix"]).size / k
  row["fastest_exact"] = min(
    ("radix", "top_k"), key=lambda backend: row[f"{backend}_ms"]
  )
  return row


def format_table(rows) -> str:
  header = (
    "| entries | density | k | radix ms | top_k ms | approx ms | sort ms "
    "| approx recall | fastest exact | compile s (radix / top_k / approx / "
    "sort) |"
  )
  lines = [header, "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
  for row in rows:
    compiles = " / ".join(f"{row[f'{b}_compile_s']:.2f}" for b in BACKENDS)
    lines.append(
      f"| {row['n']:,} | {row['density']} | {row['k']:,} "
      + "".join(f"| {row[f'{b}_ms']:.3f} " for b in BACKENDS)
      + f"| {row['approx_recall']:.4f} | {row['fastest_exact']} "
      f"| {compiles} |"
    )
  return "\n".join(lines)


def summary(rows) -> str:
  platform = jax.default_backend()
  auto = _selection.resolve_selection("auto", platform)
  winners = sorted({row["fastest_exact"] for row in rows})
  return (
    f"`selection='auto'` runs `{auto}` on `{platform}`; the fastest exact "
    f"backend measured here: {', '.join(f'`{w}`' for w in winners)} "
    f"(per size in the table)."
  )


def block_rows(quick: bool) -> list:
  """|theta| of the recipe's sparse leaves, as (blocks, 4096) rows."""
  config = bert.TINY if quick else bert.MINILM
  params = bert.init_params(config, jax.random.key(0))
  tx = train_step.optimizer("recipe")
  state = tx.init(params)
  sparse = jax.tree.leaves(state[0].indices)  # one (blocks, k) per leaf
  flat = [
    leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    if not re.search(
      train_step.EXCLUDE, jax.tree_util.keystr(path, simple=True, separator="/")
    )
  ]
  assert len(flat) == len(sparse), (len(flat), len(sparse))
  size = train_step.RECIPE["block_size"]
  rows = []
  for leaf in flat:
    x = leaf.reshape(-1)
    blocks = -(-x.size // size)
    width = min(size, x.size)
    x = jnp.pad(x, (0, blocks * width - x.size), constant_values=jnp.inf)
    rows.append(x.reshape(blocks, width))
  return rows


def block_selector(select, rows):
  """One jitted program selecting every block of every leaf."""
  ks = [max(1, int(np.ceil(train_step.DENSITY * r.shape[1]))) for r in rows]

  @jax.jit
  def fn(rows):
    return [
      jax.vmap(lambda x, k=k: select(jnp.abs(x), k, jnp.int32(k)))(r)
      for r, k in zip(rows, ks, strict=True)
    ]

  return fn


def measure_blocks(quick: bool, rounds: int) -> str:
  """The small-row path against the key sort on the recipe's blocks."""
  rows = block_rows(quick)
  programs = {
    "small-row path": block_selector(_selection._small_row_lowest_k, rows),
    "key sort (before)": block_selector(_selection._sorted_keys_lowest_k, rows),
  }
  compile_s, outputs = {}, {}
  for name, fn in programs.items():
    began = time.perf_counter()
    compiled = fn.lower(rows).compile()
    compile_s[name] = time.perf_counter() - began
    programs[name] = compiled
    outputs[name] = compiled(rows)
  for a, b in zip(*outputs.values(), strict=True):
    np.testing.assert_array_equal(a, b)
  times = {name: [] for name in programs}
  for _ in range(rounds):
    for name, fn in programs.items():
      times[name].append(time_calls(fn, rows, 0.0, 3))
  ratios = [new / old for new, old in zip(*times.values(), strict=True)]
  blocks = sum(r.shape[0] for r in rows)
  lines = [
    f"{len(rows)} leaves, {blocks} blocks; interleaved rounds: {rounds}.",
    "",
    "| program | ms per re-selection (median) | compile s |",
    "|---|---:|---:|",
  ]
  for name in programs:
    lines.append(
      f"| {name} | {statistics.median(times[name]):.1f} "
      f"| {compile_s[name]:.2f} |"
    )
  lines.append(
    f"\nsmall-row path / key sort: {statistics.median(ratios):.2f}x "
    "(median over rounds); indices checked equal."
  )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a smoke run")
  parser.add_argument("--sizes", type=int, nargs="+", default=None)
  parser.add_argument("--densities", type=float, nargs="+", default=None)
  parser.add_argument(
    "--budget", type=float, default=1.0, help="seconds of timed calls a cell"
  )
  parser.add_argument("--out", type=Path, default=None, help="a .md file")
  parser.add_argument(
    "--blocks", action="store_true", help="the recipe's 4096-entry blocks"
  )
  args = parser.parse_args()
  if args.blocks:
    print(measure_blocks(args.quick, 3 if args.quick else 7))
    return
  sizes = args.sizes or ([2**12, 2**16] if args.quick else SIZES)
  densities = args.densities or ([0.1] if args.quick else DENSITIES)
  budget = 0.1 if args.quick else args.budget

  device = jax.devices()[0]
  print(f"{device.platform} {device.device_kind}; jax {jax.__version__}")
  rows = []
  for n in sizes:
    for density in densities:
      row = measure(n, density, budget)
      rows.append(row)
      print(
        f"n={n:>9} density={density:<5} "
        + " ".join(f"{b} {row[f'{b}_ms']:9.3f} ms" for b in BACKENDS),
        flush=True,
      )
  table = format_table(rows)
  print()
  print(table)
  print()
  print(summary(rows))
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
      f"Device: {device.platform} ({device.device_kind}), jax "
      f"{jax.__version__}. Milliseconds per jitted call (`|theta|` and "
      "the selection), median of timed calls after a warm-up; `sort` is a "
      "full stable sort of the scores. The exact backends' indices were "
      "checked equal.\n\n"
      f"{table}\n\n{summary(rows)}\n"
    )


if __name__ == "__main__":
  main()
