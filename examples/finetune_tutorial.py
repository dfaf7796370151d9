"""Tutorial: finetune a pretrained sentence encoder with NanoAdam.

We take sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 22.6M
weights), put a fresh linear head on it, and finetune both on the sentiment
of Rotten Tomatoes sentences. NanoAdam trains, in every pretrained tensor,
only the 10% of entries with the smallest magnitude; the LayerNorms and the
new head are trained densely (AdamW). At the end we save the model and optimizer
with Orbax and restore them into new objects.

  python examples/finetune_tutorial.py          # a few minutes on 2 cores
  python examples/finetune_tutorial.py --quick  # the smoke run of the tests

The first run fetches the model (83 MB) and the sentences into a user cache.
"""

import argparse
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from minilm import BertConfig
from minilm import BertEncoder
from minilm import load_minilm
from minilm import tokenize
from movie_reviews import load_movie_reviews
from tqdm import trange

import nanoadam_jax as na

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="a short smoke run")
parser.add_argument("--out", type=pathlib.Path, help="checkpoint folder")
args = parser.parse_args()
steps, batch_size, eval_size = (30, 16, 200) if args.quick else (200, 16, 1000)

# 1. Data: sentences rated by people, labelled 1 (positive) or 0 (negative),
# as token ids padded to a fixed length so every batch has one shape.
encoder, tokenizer = load_minilm()
splits = load_movie_reviews(val=eval_size, test=eval_size)
train = tokenize(tokenizer, splits.train.sentences, max_len=40)
train_labels = splits.train.labels
test = tokenize(tokenizer, splits.test.sentences, max_len=48)
test_labels = splits.test.labels


# 2. Model: the pretrained encoder and a fresh head on its mean-pooled output.
class Classifier(nnx.Module):
  def __init__(self, encoder: BertEncoder, rngs: nnx.Rngs):
    self.encoder = encoder
    self.head = nnx.Linear(384, 2, rngs=rngs)

  def __call__(self, ids, mask):
    return self.head(self.encoder(ids, mask))


# 3. Optimizer: a warmup, then cosine decay to zero. Param paths read like
# "encoder/layers/0/attention_norm/scale" and "head/kernel", which is what
# `exclude` matches: LayerNorms and the head are trained densely.
def create(encoder: BertEncoder):
  model = Classifier(encoder, nnx.Rngs(0))
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, steps // 10, steps)
  tx = na.nanoadam(schedule, density=0.1, mask_interval=25, exclude="norm|head")
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


model, optimizer = create(encoder)
report = na.describe(optimizer.tx, nnx.state(model, nnx.Param))
print(
  f"optimizer state: {report.state_bytes / report.adamw_bytes:.2f}x AdamW's"
)


# 4. Loss, train step and evaluation, each compiled once by nnx.jit.
def loss_fn(model, ids, mask, labels):
  logits = model(ids, mask)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model, optimizer, ids, mask, labels):
  loss, grads = nnx.value_and_grad(loss_fn)(model, ids, mask, labels)
  optimizer.update(model, grads)  # NanoAdam selects from the current params
  return loss


@nnx.jit
def eval_step(model, ids, mask, labels):
  logits = model(ids, mask)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return loss.sum(), jnp.sum(jnp.argmax(logits, -1) == labels)


def evaluate(model, chunk=100):
  """Mean loss and accuracy on the test sentences, in fixed-size chunks."""
  total_loss, correct = 0.0, 0
  for i in range(0, eval_size, chunk):
    part = slice(i, i + chunk)
    loss, right = eval_step(
      model, test.ids[part], test.mask[part], test_labels[part]
    )
    total_loss, correct = total_loss + float(loss), correct + int(right)
  return total_loss / eval_size, correct / eval_size


# 5. The loop: shuffled batches, a progress bar with the running loss.
before = evaluate(model)
rng = np.random.default_rng(0)
for _ in (bar := trange(steps, desc="finetuning")):
  batch = rng.choice(len(train_labels), batch_size, replace=False)
  ids, mask, labels = train.ids[batch], train.mask[batch], train_labels[batch]
  loss = train_step(model, optimizer, ids, mask, labels)
  bar.set_postfix(loss=f"{float(loss):.3f}")
after = evaluate(model)
print(f"test loss     {before[0]:.3f} -> {after[0]:.3f}")
print(f"test accuracy {before[1]:.3f} -> {after[1]:.3f}")

# 6. Save the model and the optimizer together with Orbax, then restore them
# into new objects: their structure comes from abstract copies that
# nnx.eval_shape builds without allocating (or loading) any weights.
folder = args.out or pathlib.Path(tempfile.mkdtemp())
path = folder.resolve() / "checkpoint"
saved = nnx.state((model, optimizer))
with ocp.StandardCheckpointer() as checkpointer:
  checkpointer.save(path, saved, force=True)
  checkpointer.wait_until_finished()

abstract = nnx.eval_shape(
  lambda: create(BertEncoder(BertConfig(), nnx.Rngs(0)))
)
graphdef, abstract_state = nnx.split(abstract)
with ocp.StandardCheckpointer() as checkpointer:
  restored_state = checkpointer.restore(path, abstract_state)
model2, optimizer2 = nnx.merge(graphdef, restored_state)

pairs = zip(
  jax.tree.leaves(saved),
  jax.tree.leaves(nnx.state((model2, optimizer2))),
  strict=True,
)
same = all(bool(jnp.array_equal(a, b)) for a, b in pairs)
print(f"restored state equals saved: {same}")
print(f"restored test accuracy {evaluate(model2)[1]:.3f}")
print(f"optimizer step {int(optimizer2.step[...])}, checkpoint in {path}")
