"""A whole training step of a MiniLM-shaped BERT: NanoAdam, GaLore, AdamW.

What a user waits for and feels: how long the jitted, donated training step
(forward, backward, optimizer update, ``optax.apply_updates``) takes to
compile, how long it takes per step when the selection is kept (steady) and
when it is renewed (re-selection; for ``optax.contrib.galore``, the step that
refreshes its projectors by an SVD of each matrix's gradient), and XLA's peak
memory for it. Every figure is a ratio to ``optax.adamw`` measured in the
same process, each method interleaved with AdamW (alternating rounds for
compile times, alternating blocks of calls for step times) so that a busy
spell of a shared machine hits both sides of a ratio alike. A memory table
repeats the state and peak figures for a BERT-base-shaped model (compiled,
never run).

Used by ``bench_step.py``; ``python benchmarks/train_step.py [--quick]
[--methods adamw,recipe]`` runs this case alone and prints its tables.
"""

import argparse
import statistics
import time

import bert
import jax
import jax.numpy as jnp
import optax

import nanoadam_jax as na

# The paper's finetuning setting: layer norms and the classifier head dense.
EXCLUDE = "norm|head"
DENSITY = 0.1
MASK_INTERVAL = 100
LEARNING_RATE = 1e-4
# optax.adamw's default, given to GaLore as its decoupled weight decay too.
WEIGHT_DECAY = 1e-4
# optax.contrib.galore's default projector refresh interval.
GALORE_GAP = 200


# The paper's storage and schedule (README, "Memory"): int16 block indices,
# bfloat16 moments, density 10% -> 4%.
RECIPE = dict(
  granularity="block",
  block_size=4096,
  mu_dtype=jnp.bfloat16,
  nu_dtype=jnp.bfloat16,
  density_schedule=optax.linear_schedule(DENSITY, 0.04, 10_000),
  density_interval=MASK_INTERVAL,
)


# name -> (table label, refresh interval or None).
METHODS = {
  "adamw": ("optax.adamw", None),
  "nanoadam": (f"nanoadam d={DENSITY}", MASK_INTERVAL),
  "recipe": ("nanoadam, the paper's recipe", MASK_INTERVAL),
  "galore32": ("galore r32", GALORE_GAP),
  "galore128": ("galore r128", GALORE_GAP),
}


def optimizer(name: str, selection: str = "auto"):
  """One of ``METHODS``: AdamW, NanoAdam (32-bit per-tensor state, or the
  paper's recipe) or ``optax.contrib.galore`` at rank 32 or 128."""
  if name == "adamw":
    return optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  if name.startswith("galore"):
    return optax.contrib.galore(
      LEARNING_RATE,
      rank=int(name.removeprefix("galore")),
      update_proj_gap=GALORE_GAP,
      weight_decay=WEIGHT_DECAY,
    )
  return na.nanoadam(
    LEARNING_RATE,
    density=DENSITY,
    mask_interval=MASK_INTERVAL,
    exclude=EXCLUDE,
    selection=selection,
    **(RECIPE if name == "recipe" else {}),
  )


def optimizers(selection: str = "auto", methods=tuple(METHODS)) -> dict:
  """``{name: transformation}`` for AdamW and ``methods``, AdamW first."""
  names = ["adamw"] + [m for m in methods if m != "adamw"]
  return {name: optimizer(name, selection) for name in names}


def make_train_step(tx, config: bert.BertConfig):
  """A fresh (never compiled) jitted step that donates params and state."""

  def train_step(params, state, batch):
    loss, grads = jax.value_and_grad(bert.loss_fn)(params, batch, config)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return jax.jit(train_step, donate_argnums=(0, 1))


def make_update(tx):
  """A fresh jitted ``tx.update`` that donates the state."""
  return jax.jit(lambda g, s, p: tx.update(g, s, p), donate_argnums=(1,))


def compile_seconds(jitted, *args) -> dict:
  """Seconds to trace, lower and compile ``jitted`` on ``args``' shapes."""
  start = time.perf_counter()
  traced = jitted.trace(*args)
  traced_at = time.perf_counter()
  lowered = traced.lower()
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  return dict(
    trace=traced_at - start,
    lower=lowered_at - traced_at,
    compile=done - lowered_at,
    total=done - start,
    compiled=compiled,
  )


def peak_bytes(compiled) -> int:
  """XLA's peak: arguments + outputs - aliased + temporaries."""
  stats = compiled.memory_analysis()
  return (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )


def shapes_of(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def measure_compile(make, args_of, names, rounds: int) -> dict:
  """Compile times of AdamW and the other ``names``, alternating.

  ``make(name)`` returns a fresh jitted function, ``args_of(name)`` its
  abstract arguments. Each round compiles every method once, AdamW first.
  Returns per method the median seconds of each stage and the median over
  rounds of its total's ratio to AdamW's, and the last executables.
  """
  times = {name: [] for name in names}
  ratios = {name: [] for name in names}
  compiled = {}
  for _ in range(rounds):
    for name in names:
      result = compile_seconds(make(name), *args_of(name))
      compiled[name] = result.pop("compiled")
      times[name].append(result)
    for name in names:
      ratios[name].append(
        times[name][-1]["total"] / times["adamw"][-1]["total"]
      )
  medians = {
    name: {
      stage: statistics.median(t[stage] for t in runs) for stage in runs[0]
    }
    for name, runs in times.items()
  }
  ratio = {name: statistics.median(r) for name, r in ratios.items()}
  return dict(seconds=medians, ratio=ratio, exe=compiled)


def time_against_adamw(
  adamw_call, nano_call, rounds: int, block: int = 5, warm: bool = True
):
  """Times two zero-argument calls in alternating blocks of ``block`` calls.

  Returns AdamW's median time in ms and the median, over rounds, of the
  other/AdamW ratio of the two blocks' medians. Blocks let each optimizer
  run back to back, as its steps do in training (strict alternation makes
  each call find the other's buffers in the allocator and cache); rounds let
  a slow spell of a shared machine hit both sides of a ratio alike.
  """

  def block_median(call):
    times = []
    for _ in range(block):
      start = time.perf_counter()
      jax.block_until_ready(call())
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  for call in (adamw_call, nano_call) if warm else ():
    jax.block_until_ready(call())  # compile and warm up
  adamw_times, ratios = [], []
  for _ in range(rounds):
    adamw_time = block_median(adamw_call)
    adamw_times.append(adamw_time)
    ratios.append(block_median(nano_call) / adamw_time)
  return 1e3 * statistics.median(adamw_times), statistics.median(ratios)


def stepper(step, params, state, batch, count=None):
  """A zero-argument call running one donated step, threading its outputs.

  With ``count``, every call first sets the state's step counts to it: at a
  multiple of a method's interval each call is a re-selection (or projector
  refresh) step of the same compiled program.
  """
  box = [params, state]

  def call():
    if count is not None:
      state = optax.tree_utils.tree_set(box[1], count=jnp.int32(count))
      # A fresh scalar per field: GaLore's state holds two counts, and one
      # buffer must not be donated twice.
      box[1] = jax.tree.map(lambda x: x.copy() if x.ndim == 0 else x, state)
    box[0], box[1], loss = step(box[0], box[1], batch)
    return loss

  return call


def run(
  config: bert.BertConfig = bert.MINILM,
  batch_size: int = 32,
  length: int = 48,
  compile_rounds: int = 3,
  time_rounds: int = 5,
  block: int = 3,
  selection: str = "auto",
  methods=tuple(METHODS),
) -> dict:
  """Measures the BERT training step; returns the figures for a table.

  ``time_rounds=0`` measures compile times, peaks and state only.
  """
  txs = optimizers(selection, methods)
  names = list(txs)
  params = bert.init_params(config, jax.random.key(0))
  batch = bert.random_batch(config, jax.random.key(1), batch_size, length)
  abstract_params = shapes_of(params)
  abstract_states = {
    name: jax.eval_shape(tx.init, abstract_params) for name, tx in txs.items()
  }
  leaves = jax.tree.leaves(params)
  sparse = None
  if "nanoadam" in txs or "recipe" in txs:
    # Sparse leaves hold an index buffer; the others a MaskedNode.
    state = abstract_states.get("nanoadam", abstract_states.get("recipe"))
    sparse = len(jax.tree.leaves(state[0].indices))

  step = measure_compile(
    lambda name: make_train_step(txs[name], config),
    lambda name: (abstract_params, abstract_states[name], shapes_of(batch)),
    names,
    compile_rounds,
  )
  update = measure_compile(
    lambda name: make_update(txs[name]),
    lambda name: (abstract_params, abstract_states[name], abstract_params),
    names,
    max(1, compile_rounds - 1),
  )
  peaks = {name: peak_bytes(exe) for name, exe in step["exe"].items()}
  state_bytes = {
    name: na.state_bytes(state) for name, state in abstract_states.items()
  }

  # Step times, from the executables compiled above. Each method threads
  # its own params and state through its donated steps, its first step (a
  # selection, a projector refresh) before timing starts; the steady run
  # stays below the next refresh. The refresh run sets the count to the
  # method's interval before every call, so every call refreshes.
  fresh = lambda: jax.tree.map(lambda x: x.copy(), params)
  steady_calls = time_rounds * block + 3
  times = {}
  adamw_call = stepper(
    step["exe"]["adamw"], fresh(), txs["adamw"].init(params), batch
  )
  for name in names[1:] if time_rounds else ():
    interval = METHODS[name][1]
    assert steady_calls < interval, "the steady run would refresh"
    steady_call = stepper(
      step["exe"][name], fresh(), txs[name].init(params), batch
    )
    jax.block_until_ready(steady_call())  # the first selection or refresh
    adamw_ms, steady = time_against_adamw(
      adamw_call, steady_call, time_rounds, block
    )
    refresh_call = stepper(
      step["exe"][name],
      fresh(),
      txs[name].init(params),
      batch,
      count=interval,
    )
    if name.startswith("galore"):
      # XLA:CPU's SVD takes minutes for the MiniLM's matrices; one call
      # against a block of AdamW steps.
      _, refresh = time_against_adamw(adamw_call, refresh_call, 1, 1, False)
    else:
      _, refresh = time_against_adamw(
        adamw_call, refresh_call, time_rounds, block
      )
    times[name] = dict(
      adamw_ms=adamw_ms,
      steady=steady,
      reselect=refresh,
      amortized=((interval - 1) * steady + refresh) / interval,
      interval=interval,
    )
    print(
      f"  {name}: steady {steady:.2f}x, refresh {refresh:.2f}x AdamW "
      f"({adamw_ms:.0f} ms)",
      flush=True,
    )
  return dict(
    config=config,
    batch=(batch_size, length),
    params=sum(leaf.size for leaf in leaves),
    leaves=len(leaves),
    sparse_leaves=sparse,
    names=names,
    step_compile=step,
    update_compile=update,
    times=times,
    peaks=peaks,
    state_bytes=state_bytes,
  )


def memory_rows(
  config: bert.BertConfig = bert.BERT_BASE,
  batch_size: int = 32,
  length: int = 128,
  selection: str = "auto",
  methods=tuple(METHODS),
) -> dict:
  """Optimizer state bytes and XLA's step peak, compiled and never run.

  Returns ``{name: (state bytes, peak bytes)}`` for AdamW and ``methods`` on
  ``config``, and the parameter count.
  """
  txs = optimizers(selection, methods)
  params = jax.eval_shape(lambda: bert.init_params(config, jax.random.key(0)))
  batch = jax.eval_shape(
    lambda: bert.random_batch(config, jax.random.key(1), batch_size, length)
  )
  rows = {}
  for name, tx in txs.items():
    state = jax.eval_shape(tx.init, params)
    exe = make_train_step(tx, config).lower(params, state, batch).compile()
    rows[name] = (na.state_bytes(state), peak_bytes(exe))
  count = sum(leaf.size for leaf in jax.tree.leaves(params))
  return dict(
    config=config, params=count, batch=(batch_size, length), rows=rows
  )


def label(name: str) -> str:
  return METHODS[name][0]


def format_table(result: dict) -> str:
  """Markdown: one column per method, ratios to AdamW with absolute figures."""
  names = result["names"]
  step, update = result["step_compile"], result["update_compile"]
  peaks, state = result["peaks"], result["state_bytes"]
  times = result["times"]
  mib = lambda b: f"{b / 2**20:.0f} MiB"

  def seconds(c, name):
    total = c["seconds"][name]["total"]
    return (
      f"{total:.1f} s"
      if name == "adamw"
      else (f"{c['ratio'][name]:.2f}x ({total:.1f} s)")
    )

  def timed(key):
    def cell(name):
      if name == "adamw":
        return f"{times[names[1]]['adamw_ms']:.0f} ms" if len(names) > 1 else ""
      t = times[name]
      return f"{t[key]:.2f}x ({t[key] * t['adamw_ms']:.0f} ms)"

    return cell

  def ratio(values, fmt="{:.2f}x"):
    def cell(name):
      if name == "adamw":
        return mib(values["adamw"])
      return (
        f"{fmt.format(values[name] / values['adamw'])} ({mib(values[name])})"
      )

    return cell

  compiled = [
    ("compile, train step", lambda n: seconds(step, n)),
    ("compile, update alone", lambda n: seconds(update, n)),
  ]
  memory = [
    ("XLA peak memory, train step", ratio(peaks)),
    ("optimizer state", ratio(state, "{:.3f}x")),
  ]
  rows = [
    ("steady train step", timed("steady")),
    ("re-selection train step", timed("reselect")),
    (
      "re-selection / steady",
      lambda n: (
        ""
        if n == "adamw"
        else (f"{times[n]['reselect'] / times[n]['steady']:.2f}x")
      ),
    ),
    (
      "amortized over the interval",
      lambda n: (
        ""
        if n == "adamw"
        else (f"{times[n]['amortized']:.2f}x (m={times[n]['interval']})")
      ),
    ),
  ]
  rows = compiled + (rows if times else []) + memory
  lines = [
    "| measure | " + " | ".join(label(n) for n in names) + " |",
    "|---|" + "---:|" * len(names),
  ]
  for measure, cell in rows:
    lines.append(f"| {measure} | " + " | ".join(cell(n) for n in names) + " |")
  stages = []
  for what, c in (("train step", step), ("update alone", update)):
    for name in names:
      t = c["seconds"][name]
      stages.append(
        f"| {what} | {label(name)} | {t['trace']:.2f} | {t['lower']:.2f} "
        f"| {t['compile']:.2f} |"
      )
  return (
    "\n".join(lines)
    + "\n\nCompile stages, median seconds (`jit(f).trace`, `.lower()`, "
    "`.compile()`):\n\n| function | optimizer | trace | lower | compile |\n"
    "|---|---|---:|---:|---:|\n" + "\n".join(stages)
  )


def format_memory(result: dict) -> str:
  """Markdown: state bytes and step peak per method, as ratios to AdamW."""
  config, rows = result["config"], result["rows"]
  batch, length = result["batch"]
  state0, peak0 = rows["adamw"]
  mib = lambda b: f"{b / 2**20:.0f} MiB"
  lines = [
    f"BERT, vocabulary {config.vocab}, hidden {config.hidden}, "
    f"{config.layers} layers, FFN {config.ffn}: "
    f"{result['params'] / 1e6:.1f}M parameters; batch {batch} x length "
    f"{length}.",
    "",
    "| optimizer | optimizer state | XLA step peak |",
    "|---|---:|---:|",
  ]
  for name, (state, peak) in rows.items():
    lines.append(
      f"| {label(name)} | {state / state0:.3f}x ({mib(state)}) "
      f"| {peak / peak0:.2f}x ({mib(peak)}) |"
    )
  return "\n".join(lines)


def describe_case(result: dict) -> str:
  config = result["config"]
  batch, length = result["batch"]
  names = result["names"]
  sparse = result.get("sparse_leaves")
  return (
    f"BERT, vocabulary {config.vocab}, hidden {config.hidden}, "
    f"{config.layers} layers, {config.heads} heads, FFN {config.ffn}; "
    f"{result['params'] / 1e6:.1f}M parameters in {result['leaves']} leaves"
    + (
      f", {sparse} trained sparsely by NanoAdam (exclude={EXCLUDE!r}, "
      f"density {DENSITY})"
      if sparse is not None
      else ""
    )
    + f"; batch {batch} x length {length}."
    + (
      " NanoAdam with the paper's recipe: int16 blocks of 4096, bfloat16 "
      "moments, density 0.1 -> 0.04."
      if "recipe" in names
      else ""
    )
    + (
      f" GaLore: `optax.contrib.galore(rank=r, update_proj_gap={GALORE_GAP}, "
      f"weight_decay={WEIGHT_DECAY})` (its defaults, and AdamW's decoupled "
      "weight decay); its re-selection row is the step that refreshes the "
      "projectors (an SVD of every matrix's gradient)."
      if any(n.startswith("galore") for n in names)
      else ""
    )
  )


def run_case(
  quick: bool,
  selection: str = "auto",
  methods=tuple(METHODS),
  timed: bool = True,
):
  """The full MiniLM case, or a tiny BERT for a smoke run; ``timed=False``
  skips the step times."""
  if quick:
    return run(bert.TINY, 4, 16, 1, 2 if timed else 0, 2, selection, methods)
  return run(
    time_rounds=5 if timed else 0, selection=selection, methods=methods
  )


def memory_case(quick: bool, selection: str = "auto", methods=tuple(METHODS)):
  """BERT-base's memory rows, or a tiny BERT's for a smoke run."""
  if quick:
    return memory_rows(bert.TINY, 4, 16, selection, methods)
  return memory_rows(selection=selection, methods=methods)


def parse_methods(parser: argparse.ArgumentParser, text: str) -> tuple:
  """``--methods``' comma-separated names, each a key of ``METHODS``."""
  methods = tuple(text.split(","))
  unknown = set(methods) - set(METHODS)
  if unknown:
    parser.error(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}")
  return methods


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a smoke run")
  parser.add_argument("--selection", default="auto")
  parser.add_argument(
    "--methods",
    default=",".join(METHODS),
    help=f"comma-separated subset of {','.join(METHODS)} (AdamW always runs)",
  )
  parser.add_argument(
    "--recipe",
    action="store_true",
    help="only the paper's 16-bit block recipe (--methods recipe)",
  )
  parser.add_argument(
    "--memory", action="store_true", help="also the BERT-base memory table"
  )
  parser.add_argument(
    "--compile-only",
    action="store_true",
    help="compile times, peaks and state, without timing steps",
  )
  args = parser.parse_args()
  methods = parse_methods(parser, "recipe" if args.recipe else args.methods)
  result = run_case(args.quick, args.selection, methods, not args.compile_only)
  print(describe_case(result))
  print(format_table(result))
  if args.memory:
    print()
    print(format_memory(memory_case(args.quick, args.selection, methods)))


if __name__ == "__main__":
  main()
