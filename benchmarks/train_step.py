"""A whole training step of a MiniLM-shaped BERT: NanoAdam against AdamW.

What a user waits for and feels: how long the jitted, donated training step
(forward, backward, optimizer update, ``optax.apply_updates``) takes to
compile, how long it takes per step when the selection is kept (steady) and
when it is renewed (re-selection), and XLA's peak memory for it. Every figure
is a ratio to ``optax.adamw`` measured in the same process, AdamW and
NanoAdam interleaved (alternating rounds for compile times, alternating
blocks of calls for step times) so that a busy spell of a shared machine
hits both sides of a ratio alike.

Used by ``bench_step.py``; ``python benchmarks/train_step.py [--quick]`` runs
this case alone and prints its table.
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


def optimizers(selection: str = "auto", recipe: bool = False) -> dict:
  """AdamW and NanoAdam (32-bit per-tensor state, or the paper's recipe)."""
  nanoadam = na.nanoadam(
    LEARNING_RATE,
    density=DENSITY,
    mask_interval=MASK_INTERVAL,
    exclude=EXCLUDE,
    selection=selection,
    **(RECIPE if recipe else {}),
  )
  return {"adamw": optax.adamw(LEARNING_RATE), "nanoadam": nanoadam}


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


def measure_compile(make, args_of, rounds: int) -> dict:
  """Compile times of AdamW and NanoAdam, alternating, over ``rounds``.

  ``make(name)`` returns a fresh jitted function, ``args_of(name)`` its
  abstract arguments. Returns per optimizer the median seconds of each stage,
  the median over rounds of the NanoAdam/AdamW ratio of totals, and the last
  compiled executables.
  """
  times = {"adamw": [], "nanoadam": []}
  ratios, compiled = [], {}
  for _ in range(rounds):
    for name in times:
      result = compile_seconds(make(name), *args_of(name))
      compiled[name] = result.pop("compiled")
      times[name].append(result)
    ratios.append(times["nanoadam"][-1]["total"] / times["adamw"][-1]["total"])
  medians = {
    name: {
      stage: statistics.median(t[stage] for t in runs) for stage in runs[0]
    }
    for name, runs in times.items()
  }
  return dict(seconds=medians, ratio=statistics.median(ratios), exe=compiled)


def time_against_adamw(adamw_call, nano_call, rounds: int, block: int = 5):
  """Times two zero-argument calls in alternating blocks of ``block`` calls.

  Returns AdamW's median time in ms and the median, over rounds, of the
  NanoAdam/AdamW ratio of the two blocks' medians. Blocks let each optimizer
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

  for call in (adamw_call, nano_call):
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
  multiple of ``MASK_INTERVAL`` each call is a re-selection step of the
  same compiled program.
  """
  box = [params, state]

  def call():
    if count is not None:
      box[1] = optax.tree_utils.tree_set(box[1], count=jnp.int32(count))
    box[0], box[1], loss = step(box[0], box[1], batch)
    return loss

  return call


def run(
  config: bert.BertConfig = bert.MINILM,
  batch_size: int = 32,
  length: int = 48,
  compile_rounds: int = 3,
  time_rounds: int = 7,
  block: int = 5,
  selection: str = "auto",
  recipe: bool = False,
) -> dict:
  """Measures the BERT training step; returns the figures for a table."""
  txs = optimizers(selection, recipe)
  params = bert.init_params(config, jax.random.key(0))
  batch = bert.random_batch(config, jax.random.key(1), batch_size, length)
  abstract_params = shapes_of(params)
  states = {name: tx.init(params) for name, tx in txs.items()}
  abstract_states = {name: shapes_of(s) for name, s in states.items()}
  leaves = jax.tree.leaves(params)
  # Sparse leaves hold an index buffer; the others a MaskedNode (no leaves).
  sparse = len(jax.tree.leaves(states["nanoadam"][0].indices))

  step = measure_compile(
    lambda name: make_train_step(txs[name], config),
    lambda name: (abstract_params, abstract_states[name], shapes_of(batch)),
    compile_rounds,
  )
  update = measure_compile(
    lambda name: make_update(txs[name]),
    lambda name: (abstract_params, abstract_states[name], abstract_params),
    compile_rounds,
  )
  peaks = {name: peak_bytes(exe) for name, exe in step["exe"].items()}

  # Step times, from the executables compiled above. Each optimizer threads
  # its own params and state through its donated steps. NanoAdam's first
  # step selects; the steady run starts after it and stays below the next
  # re-selection at MASK_INTERVAL. The re-selection run resets the count.
  fresh = lambda: jax.tree.map(lambda x: x.copy(), params)
  calls = {}
  for name, tx in txs.items():
    call = stepper(step["exe"][name], fresh(), tx.init(params), batch)
    jax.block_until_ready(call())  # the first selection
    calls[name] = call
  calls["reselect"] = stepper(
    step["exe"]["nanoadam"],
    fresh(),
    txs["nanoadam"].init(params),
    batch,
    count=MASK_INTERVAL,
  )
  steady_calls = time_rounds * block + 1
  assert steady_calls < MASK_INTERVAL, "the steady run would re-select"
  for call in calls.values():
    jax.block_until_ready(call())  # warm
  adamw_ms, steady = time_against_adamw(
    calls["adamw"], calls["nanoadam"], time_rounds, block
  )
  _, reselect = time_against_adamw(
    calls["adamw"], calls["reselect"], time_rounds, block
  )
  amortized = ((MASK_INTERVAL - 1) * steady + reselect) / MASK_INTERVAL
  return dict(
    config=config,
    batch=(batch_size, length),
    params=sum(leaf.size for leaf in leaves),
    leaves=len(leaves),
    sparse_leaves=sparse,
    step_compile=step,
    update_compile=update,
    adamw_ms=adamw_ms,
    steady=steady,
    reselect=reselect,
    amortized=amortized,
    peaks=peaks,
    recipe=recipe,
  )


def format_table(result: dict) -> str:
  """A markdown table of ratios to AdamW, with AdamW's absolute figures."""
  step, update = result["step_compile"], result["update_compile"]
  peaks = result["peaks"]
  s = lambda c, name: c["seconds"][name]["total"]
  rows = [
    (
      "compile, train step",
      f"{s(step, 'adamw'):.1f} s",
      f"{s(step, 'nanoadam'):.1f} s",
      step["ratio"],
    ),
    (
      "compile, update alone",
      f"{s(update, 'adamw'):.1f} s",
      f"{s(update, 'nanoadam'):.1f} s",
      update["ratio"],
    ),
    (
      "steady train step",
      f"{result['adamw_ms']:.0f} ms",
      f"{result['steady'] * result['adamw_ms']:.0f} ms",
      result["steady"],
    ),
    (
      "re-selection train step",
      f"{result['adamw_ms']:.0f} ms",
      f"{result['reselect'] * result['adamw_ms']:.0f} ms",
      result["reselect"],
    ),
    (
      f"amortized, m={MASK_INTERVAL}",
      f"{result['adamw_ms']:.0f} ms",
      f"{result['amortized'] * result['adamw_ms']:.0f} ms",
      result["amortized"],
    ),
    (
      "XLA peak memory, train step",
      f"{peaks['adamw'] / 2**20:.0f} MiB",
      f"{peaks['nanoadam'] / 2**20:.0f} MiB",
      peaks["nanoadam"] / peaks["adamw"],
    ),
  ]
  lines = [
    "| measure | adamw | nanoadam | ratio |",
    "|---|---:|---:|---:|",
  ]
  for name, adamw, nano, ratio in rows:
    lines.append(f"| {name} | {adamw} | {nano} | {ratio:.2f}x |")
  stages = []
  for label, c in (("train step", step), ("update alone", update)):
    for name in ("adamw", "nanoadam"):
      t = c["seconds"][name]
      stages.append(
        f"| {label} | {name} | {t['trace']:.2f} | {t['lower']:.2f} "
        f"| {t['compile']:.2f} |"
      )
  return (
    "\n".join(lines)
    + "\n\nCompile stages, median seconds (`jit(f).trace`, `.lower()`, "
    "`.compile()`):\n\n| function | optimizer | trace | lower | compile |\n"
    "|---|---|---:|---:|---:|\n" + "\n".join(stages)
  )


def describe_case(result: dict) -> str:
  config = result["config"]
  batch, length = result["batch"]
  return (
    f"BERT, vocabulary {config.vocab}, hidden {config.hidden}, "
    f"{config.layers} layers, {config.heads} heads, FFN {config.ffn}; "
    f"{result['params'] / 1e6:.1f}M parameters in {result['leaves']} leaves, "
    f"{result['sparse_leaves']} trained sparsely (exclude={EXCLUDE!r}, "
    f"density {DENSITY}); batch {batch} x length {length}."
    + (
      " NanoAdam with the paper's recipe: int16 blocks of 4096, bfloat16 "
      "moments, density 0.1 -> 0.04."
      if result.get("recipe")
      else ""
    )
  )


def run_case(quick: bool, selection: str = "auto", recipe: bool = False):
  """The full MiniLM case, or a tiny BERT for a smoke run."""
  if quick:
    return run(bert.TINY, 4, 16, 1, 2, 2, selection, recipe)
  return run(selection=selection, recipe=recipe)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a smoke run")
  parser.add_argument("--selection", default="auto")
  parser.add_argument(
    "--recipe", action="store_true", help="the paper's 16-bit block recipe"
  )
  args = parser.parse_args()
  result = run_case(args.quick, args.selection, args.recipe)
  print(describe_case(result))
  print(format_table(result))


if __name__ == "__main__":
  main()
