"""A checkpoint saved on 8 devices resumes on 4 and on 1; run by
tests/test_remesh.py.

The state of a sparse or 8-bit optimizer is shaped unlike the params, and
elsewhere it often cannot be restored once the device count changes.
NanoAdam's buffers are plain arrays whose shardings ``na.state_shardings``
derives from the params' on any mesh, so a checkpoint restores onto whatever
mesh the new run has. A process sees a fixed number of host devices
(``XLA_FLAGS`` must say so before JAX starts), so the test runs this file
three times, in fresh interpreters:

  python tests/remesh_checks.py OUT.json save DIR       # 8 devices, 2x4 mesh
  python tests/remesh_checks.py OUT.json resume DIR 4   # 4 devices
  python tests/remesh_checks.py OUT.json resume DIR 1   # 1 device

``save`` trains each case for ``STOP`` steps on the 2x4 mesh and writes one
Orbax checkpoint per case into DIR. ``resume`` restores each onto a mesh of
its own devices, with that mesh's shardings as the restore target, trains on
to ``TOTAL`` steps (across a re-selection), and compares the run with an
uninterrupted single-device one: the same selections, the same numbers to
float32 rounding. OUT.json maps each case to ``{"ok": bool, "error": str}``.
Importing this module has no side effects.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nanoadam_jax as na
from tests.sharded_checks import Model
from tests.sharded_checks import assert_shardings
from tests.sharded_checks import force_host_devices
from tests.sharded_checks import make_grads
from tests.sharded_checks import report_checks

SAVE_DEVICES = 8
STOP, TOTAL = 7, 15
MASK_INTERVAL = 5  # re-selections at steps 0, 5 and 10: one after the stop
DENSITY = 0.125

# name: (shape, spec on the saving 2x4 ("data", "model") mesh, spec on the
# resuming 1-D ("fsdp",) mesh). When saved, the encoder's k=256 buffers are
# split over all 8 devices and the decoder's k=128 over "model"; the bias'
# k=2 stays replicated; the excluded norm keeps dense moments.
LAYOUT = {
  "encoder": ((32, 64), P("data", "model"), P("fsdp", None)),
  "decoder": ((64, 16), P("model", None), P(None, "fsdp")),
  "norm": ((64,), P("model"), P("fsdp")),
  "bias": ((16,), P(), P()),
}

OPTIONS = {
  "tensor": dict(density=DENSITY),
  # (blocks, k) buffers: the encoder's 8 blocks, one row per device saved.
  "block": dict(density=DENSITY, granularity="block", block_size=256),
}


def make_mesh(shape, names):
  devices = jax.devices()[: int(np.prod(shape))]
  return jax.make_mesh(
    shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices
  )


def make_params():
  rng = np.random.default_rng(0)
  return {
    name: rng.normal(size=shape).astype(np.float32)
    for name, (shape, _, _) in LAYOUT.items()
  }


def param_shardings(mesh):
  column = 1 if mesh.axis_names == ("data", "model") else 2
  return {
    name: NamedSharding(mesh, entry[column]) for name, entry in LAYOUT.items()
  }


def make_tx(options):
  return na.nanoadam(
    1e-2,
    mask_interval=MASK_INTERVAL,
    weight_decay=0.01,
    exclude="norm",
    **options,
  )


def make_step(tx, shardings=None):
  """The jitted train step; with ``shardings`` = (params', state's) its
  outputs keep them."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, out_shardings=shardings)


def train(step, params, state, grads, grad_shardings=None):
  for grad in grads:
    if grad_shardings is not None:
      grad = jax.device_put(grad, grad_shardings)
    params, state = step(params, state, grad)
  return params, state


def with_shardings(tree, shardings):
  """The restore target: ``tree``'s shapes and dtypes, placed by
  ``shardings``."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    tree,
    shardings,
  )


def assert_same_run(resumed, expected, rtol=1e-5, atol=2e-7):
  """Integers (indices, counts) bit for bit, floats to float32 rounding.

  Every layout compiles to another XLA program, which can move the last bit
  of a division or a fused multiply-add. The selections, which decide which
  entries ever move, must agree exactly.
  """
  leaves, expected = jax.tree.leaves(resumed), jax.tree.leaves(expected)
  assert len(leaves) == len(expected), (len(leaves), len(expected))
  for a, b in zip(leaves, expected, strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert (a.dtype, a.shape) == (b.dtype, b.shape), (a.dtype, b.dtype)
    if np.issubdtype(a.dtype, np.integer):
      np.testing.assert_array_equal(a, b)
    else:
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def assert_split(array, devices):
  """``array`` lies in ``devices`` equal shards, one per device."""
  sizes = [shard.data.size for shard in array.addressable_shards]
  assert sizes == [array.size // devices] * devices, (sizes, array.sharding)


def assert_reselected_after_restore(restored, resumed):
  """The re-selection at step 10 changed the selection the run restored."""
  before = jax.tree.leaves(restored.indices)
  after = jax.tree.leaves(resumed.indices)
  assert any(
    not np.array_equal(a, b) for a, b in zip(before, after, strict=True)
  )


def save_optax(name, directory):
  """Trains ``STOP`` steps on the 2x4 mesh; saves params and state."""
  mesh = make_mesh((2, 4), ("data", "model"))
  tx, params = make_tx(OPTIONS[name]), make_params()
  shardings = param_shardings(mesh)
  state_shardings = na.state_shardings(
    jax.eval_shape(tx.init, params), shardings
  )
  grads = make_grads(params, STOP)
  with jax.set_mesh(mesh):
    params = jax.device_put(params, shardings)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    step = make_step(tx, (shardings, state_shardings))
    params, state = train(step, params, state, grads, shardings)
  assert_shardings(state, state_shardings)
  # Each of the 8 devices holds an eighth of the encoder's buffers.
  assert_split(state[0].mu["encoder"], SAVE_DEVICES)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()


def resume_optax(name, directory, devices):
  """Restores onto a 1-D mesh of ``devices``, trains on, compares."""
  mesh = make_mesh((devices,), ("fsdp",))
  tx = make_tx(OPTIONS[name])  # built anew, as a new process does
  abstract_params = jax.eval_shape(make_params)
  abstract_state = jax.eval_shape(tx.init, abstract_params)
  shardings = param_shardings(mesh)
  state_shardings = na.state_shardings(abstract_state, shardings)
  target = {
    "params": with_shardings(abstract_params, shardings),
    "opt_state": with_shardings(abstract_state, state_shardings),
  }
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory, target)
  params, state = restored["params"], restored["opt_state"]
  assert_shardings(params, shardings)
  assert_shardings(state, state_shardings)
  assert_split(state[0].indices["encoder"], devices)

  # The uninterrupted run: one device, no shardings.
  start = make_params()
  grads = make_grads(start, TOTAL)
  step = make_step(tx)
  stopped = train(step, start, tx.init(start), grads[:STOP])
  assert_same_run((params, state), stopped)
  expected = train(step, start, tx.init(start), grads)

  with jax.set_mesh(mesh):
    step = make_step(tx, (shardings, state_shardings))
    resumed = train(step, params, state, grads[STOP:], shardings)
  assert_shardings(resumed[1], state_shardings)
  assert int(resumed[1][0].count) == TOTAL
  assert_reselected_after_restore(state[0], resumed[1][0])
  assert_same_run(resumed, expected)


def create_nnx(seed, mesh=None):
  """The model and its optimizer, sharded on ``mesh`` (None: unsharded)."""
  tx = na.nanoadam(
    1e-2, density=DENSITY, mask_interval=MASK_INTERVAL, exclude="norm"
  )
  if mesh is None:
    with nnx.use_eager_sharding(False):
      model = Model(nnx.Rngs(seed))
  else:
    model = Model(nnx.Rngs(seed))
    na.annotate_optimizer_sharding(nnx.state(model, nnx.Param), tx)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, x, y):
  loss_fn = lambda model: jnp.mean((model(x) - y) ** 2)
  optimizer.update(model, nnx.grad(loss_fn)(model))


def nnx_train(model, optimizer, steps):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(16, 32)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  for _ in range(steps):
    nnx_step(model, optimizer, x, y)


def save_nnx(_, directory):
  mesh = make_mesh((2, 4), ("data", "model"))
  with jax.set_mesh(mesh):
    model, optimizer = create_nnx(0, mesh)
    nnx_train(model, optimizer, STOP)
  assert_split(optimizer.opt_state[0].mu["up"]["kernel"].get_value(), 8)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, nnx.state((model, optimizer)))
    checkpointer.wait_until_finished()


def resume_nnx(_, directory, devices):
  """The model's annotations name mesh axes; the new mesh has fewer
  devices along them (2x2, or 1x1)."""
  shape = (2, devices // 2) if devices > 1 else (1, 1)
  mesh = make_mesh(shape, ("data", "model"))
  with jax.set_mesh(mesh):
    # Objects built for the new mesh give the restore target its shardings.
    model, optimizer = create_nnx(1, mesh)
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      nnx.state((model, optimizer)),
    )
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(directory, target)
    nnx.update((model, optimizer), restored)
    shardings = jax.tree.map(lambda x: x.sharding, target)
    assert_shardings(nnx.state((model, optimizer)), shardings)
    assert int(optimizer.step[...]) == STOP
    assert_split(optimizer.opt_state[0].mu["up"]["kernel"].get_value(), devices)
    state = jax.tree.map(np.asarray, nnx.as_pure(optimizer.opt_state[0]))
    nnx_train(model, optimizer, TOTAL - STOP)
  resumed = nnx.as_pure(nnx.state((model, optimizer)))
  assert_shardings(resumed, shardings)
  assert_reselected_after_restore(state, resumed[1]["opt_state"][0])

  reference = create_nnx(0)
  nnx_train(*reference, TOTAL)
  # The sharded matmuls sum in another order, so the gradients differ in
  # their last bits too: rounding, compounded over 15 steps.
  assert_same_run(
    resumed, nnx.as_pure(nnx.state(reference)), rtol=1e-4, atol=1e-6
  )


CASES = {
  "tensor": (save_optax, resume_optax),
  "block": (save_optax, resume_optax),
  "nnx": (save_nnx, resume_nnx),
}


def main(out_path, mode, directory, devices):
  checks = {}
  for name, (save, resume) in CASES.items():
    path = os.path.join(directory, name)
    if mode == "save":
      checks[name] = functools.partial(save, name, path)
    else:
      checks[name] = functools.partial(resume, name, path, devices)
  report_checks(out_path, checks)


if __name__ == "__main__":
  out_path, mode, directory = sys.argv[1:4]
  devices = SAVE_DEVICES if mode == "save" else int(sys.argv[4])
  force_host_devices(devices)
  main(out_path, mode, directory, devices)
