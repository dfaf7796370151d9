"""Finetuning with NanoAdam versus AdamW on a split of sklearn's digits.

A small MLP is pretrained to read the digits 0-4 (the source task); its body is
then finetuned, with a freshly initialised head, to read the digits 5-9 (the
target task). Both tasks share the same 8x8 pen strokes, so the pretrained
features transfer, and since the source head is kept, we can measure how much
of the source task the finetuned body forgets.

Every method sees the same pretrained weights, the same fresh head, the same
batches in the same order and the same number of steps. Each method sweeps its
learning rate (NanoAdam's sweep reaches 10x higher rates than AdamW's), picks
the rate with the best mean validation accuracy over seeds, and is reported on
the test split at that rate. The fresh head is excluded from the sparse
treatment (``exclude=r"head"``), so NanoAdam trains it with dense AdamW, as the
paper did with its classifier heads.

Run ``python studies/compare_finetuning.py`` (a few minutes on two CPU
cores) or add ``--quick`` for a smoke run. It writes ``comparison.md`` and
three PNG plots to ``--out`` (default ``results/``).
"""

import argparse
import functools
import pathlib
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import nanoadam_jax as na

# ----------------------------------------------------------------------------
# Settings.


ADAMW_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SPARSE_LRS = (*ADAMW_LRS, 3e-1, 1.0)  # NanoAdam's grid reaches 10x higher


class Config(NamedTuple):
  seeds: int = 5
  width: int = 256  # hidden units in each of the body's two layers
  batch_size: int = 32
  pretrain_steps: int = 800
  finetune_steps: int = 500
  mask_interval: int = 100  # the paper's default
  adamw_lrs: tuple[float, ...] = ADAMW_LRS
  sparse_lrs: tuple[float, ...] = SPARSE_LRS


QUICK = Config(
  seeds=2,
  width=64,
  pretrain_steps=200,
  finetune_steps=60,
  mask_interval=20,
  adamw_lrs=(1e-3, 1e-2),
  sparse_lrs=(1e-3, 1e-2, 1e-1),
)

# ----------------------------------------------------------------------------
# Data: sklearn's bundled 8x8 digits, split by label into two related tasks.
# The train/val/test split is fixed; seeds change initialisation and batches.


class Split(NamedTuple):
  train_x: jax.Array
  train_y: jax.Array
  val_x: jax.Array
  val_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array


def make_split(x, y, train: float, val: float, random_state: int) -> Split:
  """Stratified train / validation / test split; the test gets the rest."""
  x_train, x_rest, y_train, y_rest = train_test_split(
    x, y, train_size=train, stratify=y, random_state=random_state
  )
  x_val, x_test, y_val, y_test = train_test_split(
    x_rest,
    y_rest,
    train_size=val / (1 - train),
    stratify=y_rest,
    random_state=random_state,
  )
  arrays = (x_train, y_train, x_val, y_val, x_test, y_test)
  return Split(*(jnp.asarray(a) for a in arrays))


def load_tasks() -> tuple[Split, Split]:
  """Source: digits 0-4 (60/20/20). Target: digits 5-9 relabelled 0-4.

  The target keeps only 30% of its ~900 images for training, as finetuning
  data is usually scarce, and 30% / 40% for validation / test, so that the
  accuracies that pick and compare the methods are less noisy.
  """
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  source, target = y < 5, y >= 5
  return (
    make_split(x[source], y[source], 0.6, 0.2, random_state=0),
    make_split(x[target], y[target] - 5, 0.3, 0.3, random_state=1),
  )


# ----------------------------------------------------------------------------
# Model: a two-layer MLP body shared by the tasks, plus one linear head each.
# We keep body and head as separate NNX modules and train them functionally:
# ``params = {"body": ..., "head": ...}`` is a plain pytree whose leaf paths
# ("body/layer1/kernel", "head/bias", ...) are what ``exclude``
# matches against.


class Body(nnx.Module):
  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.layer1 = nnx.Linear(64, width, rngs=rngs)
    self.layer2 = nnx.Linear(width, width, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.layer2(nnx.relu(self.layer1(x))))


def make_forward(width: int):
  """``forward(params, x)`` for ``params = {"body": ..., "head": ...}``."""
  body_def, _ = nnx.split(nnx.eval_shape(lambda: Body(width, rngs=nnx.Rngs(0))))
  head_def, _ = nnx.split(
    nnx.eval_shape(lambda: nnx.Linear(width, 5, rngs=nnx.Rngs(0)))
  )

  def forward(params, x):
    features = nnx.merge(body_def, params["body"])(x)
    return nnx.merge(head_def, params["head"])(features)

  return forward


def init_params(width: int, seed: int):
  """Fresh body, source head and target head parameters for one seed."""
  rngs = nnx.Rngs(seed)
  body = nnx.state(Body(width, rngs=rngs))
  source_head = nnx.state(nnx.Linear(width, 5, rngs=rngs))
  target_head = nnx.state(nnx.Linear(width, 5, rngs=rngs))
  return body, source_head, target_head


# ----------------------------------------------------------------------------
# Loss, accuracy, and a training loop that runs every step inside one
# ``lax.scan`` over precomputed batch indices.


def loss_fn(forward, params, x, y):
  logits = forward(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(forward, params, x, y):
  return jnp.mean(jnp.argmax(forward(params, x), -1) == y)


def train(forward, tx, params, x, y, batches):
  """Runs ``len(batches)`` optimizer steps; returns the final params."""

  def step(carry, idx):
    params, opt_state = carry
    grads = jax.grad(loss_fn, argnums=1)(forward, params, x[idx], y[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
  return params


def batch_indices(key, n: int, steps: int, batch_size: int):
  """Shuffled epochs, cut into ``steps`` batches of indices into the data."""
  epochs = -(-steps * batch_size // n)
  keys = jax.random.split(key, epochs)
  order = jnp.concatenate([jax.random.permutation(k, n) for k in keys])
  return order[: steps * batch_size].reshape(steps, batch_size)


# ----------------------------------------------------------------------------
# The methods. Each one maps a learning rate (float or schedule) and a seed to
# an Optax transformation. The fresh head is matched by ``exclude=r"head"`` and
# trained by dense AdamW inside NanoAdam; AdamW trains everything densely.


def nano(density: float, select: str = "smallest"):
  def make(lr, seed, mask_interval):
    return na.nanoadam(
      lr,
      density=density,
      mask_interval=mask_interval,
      select=select,
      exclude=r"head",
      seed=seed,
    )

  return make


def adamw(lr, seed, mask_interval):
  del seed, mask_interval
  return optax.adamw(lr, weight_decay=0.0)


def head_only(lr, seed, mask_interval):
  """Linear probe: the body stays frozen, only the head learns."""
  del seed, mask_interval
  labels = lambda params: {
    "body": jax.tree.map(lambda _: "frozen", params["body"]),
    "head": jax.tree.map(lambda _: "train", params["head"]),
  }
  return optax.multi_transform(
    {"train": optax.adamw(lr, weight_decay=0.0), "frozen": optax.set_to_zero()},
    labels,
  )


class Method(NamedTuple):
  name: str
  make_tx: Callable
  dense_lrs: bool  # True: the AdamW grid; False: the 10x wider sparse grid
  seeded: bool = False  # True: the transformation itself draws from the seed


METHODS = (
  Method("AdamW", adamw, dense_lrs=True),
  Method("NanoAdam d=0.01", nano(0.01), dense_lrs=False),
  Method("NanoAdam d=0.1", nano(0.1), dense_lrs=False),
  Method("largest d=0.1 (ablation)", nano(0.1, "largest"), dense_lrs=False),
  Method("random d=0.1 (ablation)", nano(0.1, "random"), False, seeded=True),
  Method("head only (linear probe)", head_only, dense_lrs=False),
)


# ----------------------------------------------------------------------------
# One compiled function per method finetunes for every learning rate at once
# (``vmap`` over the rates) and returns the metrics we report.


def make_finetune(forward, method: Method, cfg: Config, seed: int):
  def finetune(lrs, pretrained, fresh_head, source_head, target, source, idx):
    def one_rate(lr):
      # A constant schedule lets the (traced) rate vary under vmap.
      tx = method.make_tx(lambda count: lr, seed, cfg.mask_interval)
      start = {"body": pretrained, "head": fresh_head}
      tuned = train(forward, tx, start, target.train_x, target.train_y, idx)
      on_source = {"body": tuned["body"], "head": source_head}
      changed = jax.tree.map(
        lambda a, b: (a != b).sum(), tuned["body"], pretrained
      )
      return {
        "target_val": accuracy(forward, tuned, target.val_x, target.val_y),
        "target_test": accuracy(forward, tuned, target.test_x, target.test_y),
        "source_test": accuracy(
          forward, on_source, source.test_x, source.test_y
        ),
        "changed": sum(jax.tree.leaves(changed))
        / sum(p.size for p in jax.tree.leaves(pretrained)),
      }

    return jax.vmap(one_rate)(lrs)

  return jax.jit(finetune)


def step_time_ms(forward, tx, params, x, y, repeats: int = 200) -> float:
  """Median wall time of one jitted optimizer step on one batch."""

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(loss_fn, argnums=1)(forward, params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  params, opt_state = jax.block_until_ready(step(params, opt_state))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    params, opt_state = jax.block_until_ready(step(params, opt_state))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


# ----------------------------------------------------------------------------
# The experiment.


def run(cfg: Config):
  source, target = load_tasks()
  forward = make_forward(cfg.width)
  pretrain = jax.jit(functools.partial(train, forward, optax.adamw(1e-3)))
  lr_grid = {
    m.name: np.asarray(cfg.adamw_lrs if m.dense_lrs else cfg.sparse_lrs)
    for m in METHODS
  }
  # results[method][metric] has shape (seeds, rates).
  results = {m.name: {} for m in METHODS}
  pretrained_source = []
  finetune = {}
  bar = tqdm(total=cfg.seeds * (len(METHODS) + 1), desc="runs")
  for seed in range(cfg.seeds):
    body, source_head, fresh_head = init_params(cfg.width, seed)
    key_pre, key_fine = jax.random.split(jax.random.key(seed))

    # Pretrain body and source head with AdamW on the source task.
    bar.set_postfix_str(f"seed {seed}: pretraining")
    idx = batch_indices(
      key_pre, len(source.train_y), cfg.pretrain_steps, cfg.batch_size
    )
    params = pretrain(
      {"body": body, "head": source_head}, source.train_x, source.train_y, idx
    )
    body, source_head = params["body"], params["head"]
    pretrained_source.append(
      float(accuracy(forward, params, source.test_x, source.test_y))
    )
    if seed == 0:  # kept for the gradient plot and the cost measurements
      seed0 = {"body": body, "head": fresh_head}
      pairs = gradient_vs_weight(forward, seed0, target)
    bar.update()

    # Finetune with every method and rate on the same batches.
    idx = batch_indices(
      key_fine, len(target.train_y), cfg.finetune_steps, cfg.batch_size
    )
    for method in METHODS:
      bar.set_postfix_str(f"seed {seed}: {method.name}")
      # One compile per method (per seed if the transformation is seeded).
      key = (method.name, seed if method.seeded else 0)
      if key not in finetune:
        finetune[key] = make_finetune(forward, method, cfg, key[1])
      metrics = finetune[key](
        jnp.asarray(lr_grid[method.name], jnp.float32),
        body,
        fresh_head,
        source_head,
        target,
        source,
        idx,
      )
      for name, value in metrics.items():
        results[method.name].setdefault(name, []).append(np.asarray(value))
      bar.update()
  bar.close()
  results = {
    m: {k: np.stack(v) for k, v in r.items()} for m, r in results.items()
  }

  # Memory and speed, on seed 0's model at each method's chosen rate.
  x, y = target.train_x[: cfg.batch_size], target.train_y[: cfg.batch_size]
  costs = {}
  for method in tqdm(METHODS, desc="step time"):
    best = int(np.argmax(results[method.name]["target_val"].mean(0)))
    lr = float(lr_grid[method.name][best])
    tx = method.make_tx(lr, 0, cfg.mask_interval)
    costs[method.name] = {
      "state_bytes": na.state_bytes(tx.init(seed0)),
      "step_ms": step_time_ms(forward, tx, seed0, x, y),
      "lr": lr,
      "best": best,
    }
  return results, costs, lr_grid, np.asarray(pretrained_source), pairs


def gradient_vs_weight(forward, params, target: Split):
  """|weight| and |gradient| of each body kernel on the whole target set."""
  grads = jax.grad(loss_fn, argnums=1)(
    forward, params, target.train_x, target.train_y
  )
  pairs = {}
  for name in ("layer1", "layer2"):
    w = np.abs(np.asarray(params["body"][name]["kernel"][...])).ravel()
    g = np.abs(np.asarray(grads["body"][name]["kernel"][...])).ravel()
    pairs[name] = (w, g)
  return pairs


# ----------------------------------------------------------------------------
# Report: a markdown table, a paragraph read off the numbers, and plots.


def pm(values):
  values = np.asarray(values)
  return f"{values.mean():.3f} ± {values.std():.3f}"


def write_report(out, cfg, results, costs, lr_grid, pre_source, pairs, secs):
  # Each method's metrics at its chosen rate, one value per seed.
  chosen = {
    name: {k: v[:, costs[name]["best"]] for k, v in r.items()}
    for name, r in results.items()
  }
  for r in chosen.values():
    r["forgetting"] = pre_source - r["source_test"]
  dense = costs["AdamW"]["state_bytes"]
  grids = "; ".join(
    f"{name}: " + ", ".join(f"{lr:.0e}" for lr in lr_grid[name])
    for name in ("AdamW", "NanoAdam d=0.1")
  )
  lines = [
    "# NanoAdam vs AdamW: finetuning digits 0-4 -> 5-9",
    "",
    f"MLP 64-{cfg.width}-{cfg.width} body, {cfg.seeds} seeds. Pretraining: "
    f"{cfg.pretrain_steps} AdamW steps (lr 1e-3) on digits 0-4. Finetuning: "
    f"{cfg.finetune_steps} steps (batch {cfg.batch_size}) on digits 5-9 with "
    f"a fresh head, mask interval {cfg.mask_interval}, the same batches for "
    "every method. Each method's learning rate is the one with the best mean "
    f"target validation accuracy on its grid ({grids}; the ablations and the "
    "probe use NanoAdam's). Everything else is measured on the test splits, "
    "mean ± std over seeds.",
    "",
    f"Pretrained source test accuracy: {pm(pre_source)}.",
    "",
    "| method | lr | target test acc | source test acc | forgetting "
    "| weights changed | opt state bytes | step ms |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, r in chosen.items():
    c = costs[name]
    lines.append(
      f"| {name} | {c['lr']:.0e} | {pm(r['target_test'])} "
      f"| {pm(r['source_test'])} | {pm(r['forgetting'])} "
      f"| {pm(r['changed'])} | {c['state_bytes']} "
      f"({c['state_bytes'] / dense:.2f}x) | {c['step_ms']:.2f} |"
    )
  lines += [
    "",
    "*forgetting*: pretrained minus finetuned source test accuracy (the "
    "finetuned body read by the kept source head). *weights changed*: "
    "fraction of body entries that differ from the pretrained ones. *opt "
    "state bytes*: the optimizer state pytree, head included, and its ratio "
    "to AdamW's. *step ms*: median time of one jitted step (batch "
    f"{cfg.batch_size}) on this machine's CPU.",
    "",
    "## What this shows, and what it does not",
    "",
    reading(results, chosen, costs, lr_grid, pre_source, pairs),
    "",
    f"Total runtime: {secs:.0f} s.",
    "",
  ]
  (out / "comparison.md").write_text("\n".join(lines))


def reading(results, chosen, costs, lr_grid, pre_source, pairs):
  """Sentences read off the numbers, so that they cannot claim too much."""
  seeds = len(pre_source)

  def mean(name, key):
    return float(chosen[name][key].mean())

  def versus(name, ref, key, higher, lower):
    """Paired over seeds: same pretrained model and batches per seed."""
    diff = chosen[name][key] - chosen[ref][key]
    se = float(diff.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else np.inf
    if abs(diff.mean()) <= 2 * se:
      return f"no clear difference from {ref} ({diff.mean():+.3f})"
    word = higher if diff.mean() > 0 else lower
    return f"{word} than {ref} ({diff.mean():+.3f} ± {se:.3f} s.e.)"

  def target(name, ref="AdamW"):
    return versus(name, ref, "target_test", "higher", "lower")

  def forgets(name, ref="AdamW"):
    return versus(name, ref, "forgetting", "more", "less")

  s = [
    "Differences below are paired over seeds and called clear when the "
    "mean exceeds two standard errors."
  ]
  for name in ("NanoAdam d=0.1", "NanoAdam d=0.01"):
    s.append(
      f"{name}: target accuracy {mean(name, 'target_test'):.3f}, "
      f"{target(name)}; forgetting {mean(name, 'forgetting'):.3f} against "
      f"AdamW's {mean('AdamW', 'forgetting'):.3f}, {forgets(name)}; it "
      f"changes {mean(name, 'changed'):.1%} of the body's entries (AdamW "
      f"{mean('AdamW', 'changed'):.1%}) and keeps "
      f"{costs[name]['state_bytes'] / costs['AdamW']['state_bytes']:.2f}x "
      "AdamW's optimizer state."
    )
  nano_lr, adamw_lr = costs["NanoAdam d=0.1"]["lr"], costs["AdamW"]["lr"]
  s.append(
    f"Validation picked lr {nano_lr:.0e} for NanoAdam d=0.1 and "
    f"{adamw_lr:.0e} for AdamW"
    + (
      ", so the sparse update did prefer the larger rate."
      if nano_lr > adamw_lr
      else ", so here the sparse update did not want a larger rate."
    )
  )
  edge = [n for n in chosen if costs[n]["lr"] == lr_grid[n].max()]
  if edge:
    s.append(
      f"At the top of its grid: {', '.join(edge)}; a higher rate might have "
      "scored better on validation."
    )
  # Validation accuracy is often flat across rates while forgetting is not,
  # so show how much the pick of rate alone moves forgetting.
  spans = []
  for name in ("AdamW", "NanoAdam d=0.1"):
    val = results[name]["target_val"]
    best = int(np.argmax(val.mean(0)))
    near = val.mean(0) >= val.mean(0)[best] - val.std(0)[best]
    drop = (pre_source[:, None] - results[name]["source_test"]).mean(0)
    lrs = lr_grid[name][near]
    spans.append(
      f"{name} forgets from {drop[near].min():.3f} to {drop[near].max():.3f}"
      f" (rates {lrs.min():.0e} to {lrs.max():.0e})"
    )
  s.append(
    "Forgetting depends on the rate as much as on the method: among the "
    "rates whose mean validation accuracy is within one std of its best, "
    + " and ".join(spans)
    + " (right panel of forgetting.png)."
  )
  for abl in ("largest d=0.1 (ablation)", "random d=0.1 (ablation)"):
    s.append(
      f"Updating the {abl.split()[0]} 10% instead of the smallest: target "
      f"accuracy {target(abl, 'NanoAdam d=0.1')}, forgetting "
      f"{mean(abl, 'forgetting'):.3f}, {forgets(abl, 'NanoAdam d=0.1')}."
    )
  probe = "head only (linear probe)"
  gains = {
    n: mean(n, "target_test") - mean(probe, "target_test")
    for n in ("AdamW", "NanoAdam d=0.1", "NanoAdam d=0.01")
  }
  s.append(
    f"Training only the head (no forgetting) reaches "
    f"{mean(probe, 'target_test'):.3f}, so finetuning the body buys "
    + ", ".join(f"{g:+.3f} with {n}" for n, g in gains.items())
    + "."
  )
  ratios = []
  for w, g in pairs.values():
    small, large = w <= np.quantile(w, 0.1), w >= np.quantile(w, 0.9)
    ratios.append(g[small].mean() / g[large].mean())
  holds = (
    "holds here"
    if min(ratios) > 1
    else "holds only in part here"
    if max(ratios) > 1
    else "does not hold here"
  )
  s.append(
    "The paper's premise, that large gradients sit on small weights, "
    f"{holds}: in the pretrained body the mean |gradient| on the 10% "
    "smallest weights is "
    + " and ".join(f"{r:.2f}x" for r in ratios)
    + " that on the 10% largest (layer 1, layer 2; see weight_vs_grad.png)."
  )
  nano_ms, adamw_ms = (
    costs["NanoAdam d=0.1"]["step_ms"],
    costs["AdamW"]["step_ms"],
  )
  s.append(
    f"A NanoAdam d=0.1 step takes {nano_ms:.2f} ms against AdamW's "
    f"{adamw_ms:.2f} ms on this CPU; at this size a step is dominated by "
    "overheads, so this says little about large models."
  )
  n_body = sum(w.size for w, _ in pairs.values())
  s.append(
    "This does not show behaviour at scale (the paper finetunes large "
    f"pretrained networks; this body has {n_body / 1000:.0f}k weights and "
    f"reads 8x8 images), significance beyond {seeds} seeds, or accelerator "
    "speed and memory; the rate grids are coarse and the splits small."
  )
  return " ".join(s)


def plot(out, cfg, results, lr_grid, pre_source, pairs):
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in results.items():
    val = r["target_val"]
    ax.errorbar(
      lr_grid[name],
      val.mean(0),
      yerr=val.std(0),
      marker="o",
      capsize=3,
      label=name,
    )
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("target validation accuracy")
  ax.set_title("Learning-rate sweep (mean ± std over seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "accuracy_vs_lr.png", dpi=120)
  plt.close(fig)

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  names = list(results)
  drops = []
  for name in names:
    best = int(np.argmax(results[name]["target_val"].mean(0)))
    drops.append(pre_source - results[name]["source_test"][:, best])
  left.bar(
    range(len(names)),
    [d.mean() for d in drops],
    yerr=[d.std() for d in drops],
    capsize=3,
    color="tab:red",
  )
  left.set_xticks(range(len(names)), names, rotation=25, ha="right")
  left.set_ylabel("source test accuracy drop")
  left.set_title("Forgetting at each method's chosen rate")
  for name in names:
    drop = pre_source[:, None] - results[name]["source_test"]
    right.errorbar(
      lr_grid[name],
      drop.mean(0),
      yerr=drop.std(0),
      marker="o",
      capsize=3,
      label=name,
    )
  right.set_xscale("log")
  right.set_xlabel("learning rate")
  right.set_ylabel("source test accuracy drop")
  right.set_title("Forgetting at every rate")
  right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "forgetting.png", dpi=120)
  plt.close(fig)

  fig, axes = plt.subplots(1, len(pairs), figsize=(10, 4))
  for ax, (name, (w, g)) in zip(axes, pairs.items(), strict=True):
    # Log axes cannot show zeros: layer 1 has rows for pixels that are blank
    # in every image, whose gradients are exactly zero.
    nonzero = (w > 0) & (g > 0)
    w, g = w[nonzero], g[nonzero]
    keep = np.random.default_rng(0).permutation(w.size)[:20000]
    ax.scatter(w[keep], g[keep], s=1, alpha=0.2, color="tab:blue")
    # Median |gradient| in 20 |weight| bins of equal count.
    edges = np.quantile(w, np.linspace(0, 1, 21))
    bins = np.clip(np.searchsorted(edges, w, side="right") - 1, 0, 19)
    mids = [np.median(w[bins == b]) for b in range(20)]
    meds = [np.median(g[bins == b]) for b in range(20)]
    ax.plot(mids, meds, color="black", label="binned median")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|weight| (pretrained)")
    ax.set_ylabel("|gradient| on the target task")
    ax.set_title(f"body/{name}/kernel ({(~nonzero).sum()} zeros not shown)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(out / "weight_vs_grad.png", dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a smoke run")
  parser.add_argument("--out", default="results", help="output folder")
  parser.add_argument("--seeds", type=int, help="override the seed count")
  args = parser.parse_args()
  cfg = QUICK if args.quick else Config()
  if args.seeds:
    cfg = cfg._replace(seeds=args.seeds)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  start = time.perf_counter()
  results, costs, lr_grid, pre_source, pairs = run(cfg)
  secs = time.perf_counter() - start
  write_report(out, cfg, results, costs, lr_grid, pre_source, pairs, secs)
  plot(out, cfg, results, lr_grid, pre_source, pairs)
  print((out / "comparison.md").read_text())


if __name__ == "__main__":
  main()
