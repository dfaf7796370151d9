"""Quickstart: NanoAdam as the optimizer of a Flax NNX model.

Trains a small MLP on sklearn's 8x8 digits with ``nanoadam``: every 20 steps
it picks, in each weight tensor, the 10% of entries with the smallest
magnitude, and runs Adam on those entries only. Prints the loss, the fraction
of weights that moved, and the optimizer state's size next to AdamW's.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from sklearn.datasets import load_digits

import nanoadam_jax as na

# Data: 1797 images of 8x8 pixels, labels 0-9.
digits = load_digits()
images = jnp.asarray(digits.data / 16.0, jnp.float32)
labels = jnp.asarray(digits.target, jnp.int32)


# Model: a two-layer MLP.
class MLP(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


model = MLP(rngs=nnx.Rngs(0))
start = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
tx = na.nanoadam(1e-2, density=0.1, mask_interval=20)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


# Loss and train step.
def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)  # NanoAdam gets the params it selects from
  return loss


# Loop: 300 steps of 64 random images.
key = jax.random.key(0)
for step in range(301):
  key, sub = jax.random.split(key)
  batch = jax.random.choice(sub, len(labels), (64,), replace=False)
  loss = train_step(model, optimizer, images[batch], labels[batch])
  if step % 50 == 0:
    print(f"step {step:3d}  loss {float(loss):.3f}")

# Report.
accuracy = jnp.mean(jnp.argmax(model(images), -1) == labels)
new, old = jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(start)
moved = sum(int((a != b).sum()) for a, b in zip(new, old, strict=True))
print(f"train accuracy {float(accuracy):.3f}")
# Above 10%: each re-selection may pick entries that have not moved yet.
print(f"weights that moved: {moved / sum(a.size for a in old):.1%}")
adamw_state = optax.adamw(1e-2).init(nnx.state(model, nnx.Param))
nano_bytes = na.state_bytes(optimizer.opt_state)
adamw_bytes = na.state_bytes(adamw_state)
print(
  f"optimizer state: NanoAdam {nano_bytes:,} bytes, AdamW {adamw_bytes:,} "
  f"bytes ({nano_bytes / adamw_bytes:.2f}x)"
)
