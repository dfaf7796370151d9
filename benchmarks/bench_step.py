"""Speed and memory of a NanoAdam step against optax.adamw, in one process.

For each tensor size and density it times the jitted ``update`` of
``optax.adamw`` and of ``nanoadam`` (a steady step, a re-selection step, and
their mix at ``mask_interval=100``), and of ``optax.contrib.galore`` at rank
32 and 128 (a steady step, a projector refresh, and their mix at its
``update_proj_gap``), reports persistent state bytes, and reads the peak
memory of a whole jitted training step (params, grads, state, with donation)
from XLA's compiled memory analysis. Then it runs the case a user feels
(``train_step.py``): the whole donated training step of a MiniLM-shaped BERT,
its compile time, steady and re-selection step times and peak memory, for
AdamW, NanoAdam (density 0.1 and the paper's recipe) and GaLore, and the
state and peak of a BERT-base-shaped step. Every number is a ratio to AdamW
measured in the same run.

  python benchmarks/bench_step.py                 # the full table (minutes)
  python benchmarks/bench_step.py --quick         # a smoke run (seconds)

Writes ``RESULTS.md`` and ``step_ratios.png`` to ``--out`` (default: the
folder of this script).
"""

import argparse
import datetime
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import train_step

import nanoadam_jax as na

MASK_INTERVAL = 100
GALORE_RANKS = (32, 128)
# GaLore projects matrices: the single tensor is laid out in rows of this
# many entries (a hidden width), and its projector spans the rows.
GALORE_COLUMNS = 1024
# XLA:CPU's SVD of a (65536, 1024) matrix takes minutes; larger tensors get
# GaLore's steady step only.
GALORE_REFRESH_MAX_N = 2**24


def donated_steps(tx, state, grads, params):
  """A zero-argument call that runs one donated ``tx.update`` per call."""
  update = jax.jit(tx.update, donate_argnums=(1,))
  box = [state]

  def step():
    updates, box[0] = update(grads, box[0], params)
    return updates

  return step


def repeats_for(n: int) -> int:
  """Rounds of blocks: more for small, fast tensors."""
  return max(3, min(9, int(1e8 / max(n, 1))))


def time_updates(n: int, density: float, selection: str) -> dict:
  """Times AdamW and NanoAdam updates on one float32 tensor of n entries."""
  keys = jax.random.split(jax.random.key(0), 2)
  params = {"w": jax.random.normal(keys[0], (n,), jnp.float32)}
  grads = {"w": jax.random.normal(keys[1], (n,), jnp.float32)}
  repeats = repeats_for(n)

  adamw = optax.adamw(1e-3, weight_decay=0.0)
  tx = na.nanoadam(
    1e-3, density=density, mask_interval=MASK_INTERVAL, selection=selection
  )
  update = jax.jit(tx.update)
  first_state = tx.init(params)  # count 0: this update re-selects
  # As in a training loop, each optimizer's state is donated and threaded
  # through its steps (AdamW then updates its moments in place). NanoAdam's
  # steady run starts at count 1 and never reaches the next re-selection.
  run_adamw = donated_steps(adamw, adamw.init(params), grads, params)
  adamw_ms, steady = train_step.time_against_adamw(
    run_adamw,
    donated_steps(tx, update(grads, first_state, params)[1], grads, params),
    repeats,
  )
  # Re-selection steps restart from count 0, so their state is not donated.
  _, reselect = train_step.time_against_adamw(
    run_adamw,
    lambda: update(grads, first_state, params),
    max(2, repeats // 3),
    block=3,
  )
  amortized = ((MASK_INTERVAL - 1) * steady + reselect) / MASK_INTERVAL

  shapes = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params
  )
  ours_bytes = na.state_bytes(jax.eval_shape(tx.init, shapes))
  adamw_bytes = na.state_bytes(jax.eval_shape(adamw.init, shapes))
  return dict(
    n=n,
    density=density,
    adamw_ms=adamw_ms,
    steady=steady,
    reselect=reselect,
    amortized=amortized,
    steady_ms=steady * adamw_ms,
    reselect_ms=reselect * adamw_ms,
    state=ours_bytes / adamw_bytes,
  )


def galore(rank: int):
  """``optax.contrib.galore`` as the single-tensor rows run it: AdamW's
  (zero) weight decay there, its default refresh interval."""
  return optax.contrib.galore(
    1e-3,
    rank=rank,
    update_proj_gap=train_step.GALORE_GAP,
    weight_decay=0.0,
  )


def time_galore(n: int, rank: int) -> dict:
  """Times GaLore against AdamW on one float32 matrix of n entries."""
  keys = jax.random.split(jax.random.key(0), 2)
  shape = (n // GALORE_COLUMNS, GALORE_COLUMNS)
  params = {"w": jax.random.normal(keys[0], shape, jnp.float32)}
  grads = {"w": jax.random.normal(keys[1], shape, jnp.float32)}
  adamw = optax.adamw(1e-3, weight_decay=0.0)
  tx = galore(rank)
  update = jax.jit(tx.update)
  first_state = tx.init(params)  # count 0: this update refreshes
  run_adamw = donated_steps(adamw, adamw.init(params), grads, params)
  adamw_ms, steady = train_step.time_against_adamw(
    run_adamw,
    donated_steps(tx, update(grads, first_state, params)[1], grads, params),
    repeats_for(n),
  )
  gap = train_step.GALORE_GAP
  refresh = amortized = None
  if n <= GALORE_REFRESH_MAX_N:
    # An SVD per call: one call against a block of AdamW steps.
    _, refresh = train_step.time_against_adamw(
      run_adamw, lambda: update(grads, first_state, params), 1, 1, False
    )
    amortized = ((gap - 1) * steady + refresh) / gap
  shapes = train_step.shapes_of(params)
  ours = na.state_bytes(jax.eval_shape(tx.init, shapes))
  theirs = na.state_bytes(jax.eval_shape(adamw.init, shapes))
  return dict(
    n=n,
    rank=rank,
    adamw_ms=adamw_ms,
    steady=steady,
    reselect=refresh,
    amortized=amortized,
    state=ours / theirs,
  )


def mlp_shapes(width: int, depth: int) -> dict:
  """A deep, wide MLP whose parameters dominate a tiny batch's memory."""
  shapes = {}
  for layer in range(depth):
    shapes[f"layer{layer}"] = {
      "kernel": jax.ShapeDtypeStruct((width, width), jnp.float32),
      "bias": jax.ShapeDtypeStruct((width,), jnp.float32),
    }
  return shapes


def mlp_loss(params, x):
  for layer in params.values():
    x = jnp.tanh(x @ layer["kernel"] + layer["bias"])
  return jnp.mean(x**2)


def train_step_peak_bytes(tx, shapes, batch) -> int:
  """Peak bytes of a donated, jitted training step from XLA's analysis."""

  def step(params, state, x):
    grads = jax.grad(mlp_loss)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(tx.init, shapes)
  compiled = (
    jax.jit(step, donate_argnums=(0, 1)).lower(shapes, state, batch).compile()
  )
  return train_step.peak_bytes(compiled)


def memory_table(width: int, depth: int, densities, selection: str) -> list:
  shapes = mlp_shapes(width, depth)
  batch = jax.ShapeDtypeStruct((8, width), jnp.float32)
  params_bytes = na.state_bytes(shapes)
  adamw_peak = train_step_peak_bytes(optax.adamw(1e-3), shapes, batch)
  bf16 = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  variants = [
    ("", {}),
    # 8 bytes an entry, stochastically rounded.
    (", 16-bit moments", bf16),
    # The paper's storage: int16 block indices, bfloat16 moments (6 bytes
    # an entry, stochastically rounded).
    (
      ", 16-bit block state",
      dict(granularity="block", block_size=4096, **bf16),
    ),
  ]
  configs = [
    (f"nanoadam d={density}{suffix}", dict(density=density, **options))
    for suffix, options in variants
    for density in densities
  ]
  # The whole recipe: the same state, and a density schedule 0.1 -> 0.04.
  configs.append(
    (
      "nanoadam, the paper's recipe (16-bit blocks, d=0.1 -> 0.04)",
      dict(density=train_step.DENSITY, **train_step.RECIPE),
    )
  )
  rows = [("adamw", adamw_peak, 1.0)]
  for name, options in configs:
    tx = na.nanoadam(1e-3, selection=selection, **options)
    peak = train_step_peak_bytes(tx, shapes, batch)
    rows.append((name, peak, peak / adamw_peak))
  for rank in GALORE_RANKS:
    peak = train_step_peak_bytes(galore(rank), shapes, batch)
    rows.append((f"optax.contrib.galore r{rank}", peak, peak / adamw_peak))
  return params_bytes, rows


def machine_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as info:
      for line in info:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  device = jax.devices()[0]
  return (
    f"{device.platform.upper()} backend ({device.device_kind}), "
    f"{os.cpu_count()} CPU cores ({cpu}); jax {jax.__version__}, "
    f"optax {optax.__version__}, nanoadam_jax {na.__version__}"
  )


def format_speed(rows) -> str:
  lines = [
    "| entries | density | adamw ms | steady | re-select | amortized "
    f"(m={MASK_INTERVAL}) | state bytes |",
    "|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in rows:
    lines.append(
      f"| {row['n']:,} | {row['density']} | {row['adamw_ms']:.2f} "
      f"| {row['steady']:.2f}x | {row['reselect']:.2f}x | "
      f"{row['amortized']:.2f}x | {row['state']:.3f}x |"
    )
  return "\n".join(lines)


def format_galore(rows) -> str:
  gap = train_step.GALORE_GAP
  lines = [
    "| entries | rank | adamw ms | steady | refresh | amortized "
    f"(gap={gap}) | state bytes |",
    "|---:|---:|---:|---:|---:|---:|---:|",
  ]
  cell = lambda x: "-" if x is None else f"{x:.2f}x"
  for row in rows:
    lines.append(
      f"| {row['n']:,} | {row['rank']} | {row['adamw_ms']:.2f} "
      f"| {row['steady']:.2f}x | {cell(row['reselect'])} | "
      f"{cell(row['amortized'])} | {row['state']:.3f}x |"
    )
  return "\n".join(lines)


def format_memory(params_bytes, rows) -> str:
  lines = [
    f"Model: params {params_bytes / 2**20:.0f} MiB (float32).",
    "",
    "| optimizer | peak step memory | ratio to adamw |",
    "|---|---:|---:|",
  ]
  for name, peak, ratio in rows:
    lines.append(f"| {name} | {peak / 2**20:.0f} MiB | {ratio:.3f}x |")
  return "\n".join(lines)


def plot(rows, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=False)
  for ax, key, title in zip(
    axes,
    ("steady", "reselect", "amortized"),
    ("steady step", "re-selection step", f"amortized (m={MASK_INTERVAL})"),
    strict=True,
  ):
    for density in sorted({row["density"] for row in rows}):
      subset = [row for row in rows if row["density"] == density]
      ax.plot(
        [row["n"] for row in subset],
        [row[key] for row in subset],
        marker="o",
        label=f"density {density}",
      )
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="adamw")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entries in the tensor")
    ax.set_title(title)
  axes[0].set_ylabel("time / optax.adamw time")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a smoke run")
  parser.add_argument("--selection", default="auto")
  parser.add_argument("--out", type=Path, default=Path(__file__).parent)
  parser.add_argument(
    "--methods",
    default=",".join(train_step.METHODS),
    help="the BERT training step's methods (AdamW always runs)",
  )
  args = parser.parse_args()
  methods = train_step.parse_methods(parser, args.methods)

  if args.quick:
    sizes, densities, width, depth = [2**16, 2**18], [0.1], 256, 2
  else:
    sizes = [2**20, 2**22, 2**24, 2**26]
    densities, width, depth = [0.01, 0.1], 2048, 8
  print(machine_description())
  rows = []
  for n in sizes:
    for density in densities:
      row = time_updates(n, density, args.selection)
      rows.append(row)
      print(
        f"n={n:>9} density={density:<5} adamw {row['adamw_ms']:8.2f} ms | "
        f"steady {row['steady']:.2f}x reselect {row['reselect']:.2f}x "
        f"amortized {row['amortized']:.2f}x state {row['state']:.3f}x",
        flush=True,
      )
  galore_rows = []
  for n in sizes:
    for rank in GALORE_RANKS:
      row = time_galore(n, rank)
      galore_rows.append(row)
      print(
        f"n={n:>9} galore r{rank:<4} adamw {row['adamw_ms']:8.2f} ms | "
        f"steady {row['steady']:.2f}x refresh {row['reselect']} "
        f"state {row['state']:.3f}x",
        flush=True,
      )
  params_bytes, memory_rows = memory_table(
    width, depth, densities, args.selection
  )
  speed = format_speed(rows)
  galore_speed = format_galore(galore_rows)
  memory = format_memory(params_bytes, memory_rows)
  print()
  print(speed)
  print()
  print(galore_speed)
  print()
  print(memory)
  print("\nTraining step of a BERT (train_step.py) ...", flush=True)
  bert_result = train_step.run_case(args.quick, args.selection, methods)
  bert_case = train_step.describe_case(bert_result)
  bert_table = train_step.format_table(bert_result)
  print(bert_case)
  print(bert_table)
  print("\nMemory of a BERT-base step (train_step.py) ...", flush=True)
  base_memory = train_step.format_memory(
    train_step.memory_case(args.quick, args.selection, methods)
  )
  print(base_memory)

  args.out.mkdir(parents=True, exist_ok=True)
  every = len(methods) == len(train_step.METHODS)
  subset = "" if every else f" --methods {args.methods}"
  plot(rows, args.out / "step_ratios.png")
  (args.out / "RESULTS.md").write_text(
    "# NanoAdam step against optax.adamw\n\n"
    f"Machine: {machine_description()}. Date: {datetime.date.today()}.\n"
    f"Selection backend: `{args.selection}`. Produced by "
    f"`python benchmarks/bench_step.py{' --quick' if args.quick else ''}"
    f"{subset}`."
    "\n\n## Update time, as a ratio to optax.adamw in the same run\n\n"
    "Jitted `update` on one float32 tensor, each optimizer's state donated "
    "and threaded through its steps as in a training loop; AdamW and "
    "NanoAdam run in alternating blocks of calls and the ratio is the "
    "median over rounds of the ratio of block medians. "
    "Steady: a step that keeps the selection; re-select: a step that "
    f"selects anew; amortized: {MASK_INTERVAL - 1} steady steps and one "
    "re-selection. State bytes: persistent optimizer state.\n\n"
    f"{speed}\n\n![ratios](step_ratios.png)\n\n"
    "### optax.contrib.galore on the same tensor\n\n"
    f"The tensor as a ({GALORE_COLUMNS}-column) matrix, "
    f"`optax.contrib.galore(rank=r, update_proj_gap="
    f"{train_step.GALORE_GAP}, weight_decay=0.0)` against AdamW on the same "
    "matrix, as above. Steady: a step that keeps the projector; refresh: "
    "the step that recomputes it (an SVD of the gradient), timed once "
    f"against a block of AdamW steps (tensors up to {GALORE_REFRESH_MAX_N:,} "
    "entries: XLA:CPU's SVD of the largest takes minutes); amortized: "
    f"{train_step.GALORE_GAP - 1} steady steps and one refresh.\n\n"
    f"{galore_speed}\n\n"
    "## Peak memory of a donated, jitted training step\n\n"
    "From `jax.jit(step, donate_argnums=(0, 1)).lower(...).compile()"
    ".memory_analysis()`: arguments + outputs - aliased + temporaries.\n\n"
    f"{memory}\n\n"
    "## A whole training step of a MiniLM-shaped BERT\n\n"
    f"{bert_case} Jitted step (forward, backward, update, "
    "`optax.apply_updates`) with params and state donated; each method "
    "interleaved with AdamW. Compile: fresh `jax.jit` functions, every "
    "method once per round, median over rounds of the ratio of totals "
    "(trace + lower + compile) to AdamW's in the same round. Steady: blocks "
    "of steps that keep the selection (the projector); re-selection: the "
    "same executable with the step count set to the method's interval "
    "before every call, so every step selects anew (GaLore: recomputes its "
    "projectors; one call, against a block of AdamW steps); amortized: one "
    "such step per interval. Peak memory: XLA's compiled memory analysis "
    "of the donated step. Each cell: the ratio to AdamW, then the "
    "absolute figure.\n\n"
    f"{bert_table}\n\n"
    "## Memory of a BERT-base-shaped training step\n\n"
    "Compiled, never run: persistent optimizer state and XLA's peak of "
    "the donated step, as ratios to AdamW.\n\n"
    f"{base_memory}\n"
  )
  print(f"\nwrote {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
  main()
