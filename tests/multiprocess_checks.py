"""NanoAdam trained by two JAX processes; run by tests/test_multiprocess.py.

Users who outgrow one host run one process per host under
``jax.distributed``, all of them driving one global mesh. This file plays
every part of that, each in a fresh interpreter (a process fixes its device
count when JAX starts):

  python tests/multiprocess_checks.py OUT.json train DIR PORT PROCESS_ID
      # one of two processes, 4 CPU devices each (gloo collectives)
  python tests/multiprocess_checks.py OUT.json reference DIR
      # one process, 8 CPU devices: the same run, compared
  python tests/multiprocess_checks.py OUT.json resume DIR
      # one process, 1 device: the checkpoint restored and continued

``train`` (both processes, coordinator on 127.0.0.1:PORT) builds a 2x4 mesh
over the 8 global devices, shards the params and, with
``na.state_shardings``, the state; each process feeds its own rows of every
global batch. Both save params and state with Orbax at step ``STOP`` (a
multi-process checkpoint: each writes its shards) and train on to
``TOTAL``; process 0 writes the gathered results of both steps to
``DIR/<case>-stop.npz`` and ``DIR/<case>-total.npz``. A failure there
raises, so the process dies and the test sees it at once; success writes
OUT.json. ``reference`` and ``resume`` compare against those files and
write OUT.json (``{"ok": bool, "error": str}`` per case).
Importing this module has no side effects.
"""

import functools
import json
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nanoadam_jax as na
from tests.remesh_checks import assert_same_run
from tests.remesh_checks import with_shardings
from tests.sharded_checks import assert_shardings
from tests.sharded_checks import force_host_devices
from tests.sharded_checks import report_checks

PROCESSES = 2
LOCAL_DEVICES = 4
TOTAL, STOP = 30, 17
MASK_INTERVAL = 5  # re-selections at 0, 5, ..., 25: two after the stop
DENSITY = 0.125
LEARNING_RATE = 3e-2
BATCH, FEATURES, OUTPUTS = 16, 32, 8

# name: (shape, spec on the 2x4 ("data", "model") mesh). The up kernel's
# k=256 buffers split over all 8 devices, across both processes.
LAYOUT = {
  "up/kernel": ((FEATURES, 64), P("data", "model")),
  "up/bias": ((64,), P("model")),
  "norm/scale": ((64,), P("model")),  # excluded: dense AdamW
  "down/kernel": ((64, OUTPUTS), P("model", None)),
  "down/bias": ((OUTPUTS,), P()),
}

CASES = {
  "tensor": dict(density=DENSITY),
  # The paper's storage: int16 block-local indices, bfloat16 moments.
  "block16": dict(
    density=DENSITY,
    granularity="block",
    block_size=256,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
  ),
}


def make_tx(case):
  return na.nanoadam(
    LEARNING_RATE,
    mask_interval=MASK_INTERVAL,
    weight_decay=0.01,
    exclude="norm",
    **CASES[case],
  )


def make_params():
  rng = np.random.default_rng(0)
  params = {
    name: (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32)
    for name, (shape, _) in LAYOUT.items()
  }
  params["norm/scale"] = np.ones(64, np.float32)
  return params


def global_batch(step):
  """The batch of ``step``, the same in every process: a noisy teacher."""
  rng = np.random.default_rng(100 + step)
  x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
  teacher = np.random.default_rng(7).normal(size=(FEATURES, OUTPUTS))
  y = np.tanh(x @ teacher).astype(np.float32)
  return x, y


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["up/kernel"] + params["up/bias"])
  out = (h * params["norm/scale"]) @ params["down/kernel"] + params["down/bias"]
  return jnp.mean((out - y) ** 2)


def make_mesh(shape=(2, 4), names=("data", "model")):
  devices = jax.devices()[: int(np.prod(shape))]
  return jax.make_mesh(
    shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices
  )


def param_shardings(mesh):
  return {
    name: NamedSharding(mesh, spec if len(mesh.axis_names) == 2 else P())
    for name, (_, spec) in LAYOUT.items()
  }


def make_step(tx, shardings):
  """The jitted, donated train step, keeping (params', state's) shardings."""

  @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=shardings)
  def step(params, state, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def process_rows(sharding, shape):
  """The rows of a global batch that this process's devices hold."""
  rows = {
    index[0].indices(shape[0])
    for index in sharding.addressable_devices_indices_map(shape).values()
  }
  start = min(r[0] for r in rows)
  stop = max(r[1] for r in rows)
  return slice(start, stop)


def place_batch(mesh, step):
  """The global batch of ``step`` as arrays split by rows over "data".

  Each process passes only its own rows, as a data loader on each host
  would (``jax.make_array_from_process_local_data``); in a single process
  that is the whole batch.
  """
  sharding = NamedSharding(
    mesh, P("data" if "data" in mesh.axis_names else None)
  )
  arrays = []
  for full in global_batch(step):
    local = full[process_rows(sharding, full.shape)]
    arrays.append(
      jax.make_array_from_process_local_data(sharding, local, full.shape)
    )
  return arrays


def place_params(params, shardings):
  """Every process holds the full (pretrained) values and keeps its shards."""
  return {
    name: jax.make_array_from_callback(
      value.shape, shardings[name], lambda index, v=value: v[index]
    )
    for name, value in params.items()
  }


def init_sharded(tx, mesh):
  shardings = param_shardings(mesh)
  abstract = jax.eval_shape(tx.init, jax.eval_shape(make_params))
  state_shardings = na.state_shardings(abstract, shardings)
  params = place_params(make_params(), shardings)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  return params, state, shardings, state_shardings


def train(step, mesh, params, state, start, stop):
  for t in range(start, stop):
    params, state = step(params, state, *place_batch(mesh, t))
  return params, state


def flat_arrays(tree):
  """``{keystr: numpy array}`` of a tree's leaves (gathered when global)."""
  with_path = jax.tree_util.tree_leaves_with_path(tree)
  return {
    jax.tree_util.keystr(path): np.asarray(
      multihost_utils.process_allgather(leaf, tiled=True)
    )
    for path, leaf in with_path
  }


def tree_from(arrays, like):
  """The tree of ``like`` with the arrays of :func:`flat_arrays`."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
  # NumPy files keep bfloat16 as raw 2-byte records; ``like`` knows better.
  return treedef.unflatten(
    [
      arrays[jax.tree_util.keystr(path)].view(np.asarray(leaf).dtype)
      for path, leaf in with_path
    ]
  )


def checkpoint_path(directory, case):
  return os.path.abspath(os.path.join(directory, case, "step_stop"))


def results_path(directory, case, when):
  return os.path.join(directory, f"{case}-{when}.npz")


def train_processes(directory):
  """One of the two processes: train, save at STOP, train on, gather."""
  assert jax.process_count() == PROCESSES, jax.process_count()
  assert jax.local_device_count() == LOCAL_DEVICES
  assert jax.device_count() == PROCESSES * LOCAL_DEVICES
  mesh = make_mesh()
  # The "data" axis runs across the processes: each holds half the batch.
  rows = process_rows(NamedSharding(mesh, P("data")), (BATCH, FEATURES))
  assert rows.stop - rows.start == BATCH // PROCESSES, rows
  for case in CASES:
    tx = make_tx(case)
    params, state, shardings, state_shardings = init_sharded(tx, mesh)
    step = make_step(tx, (shardings, state_shardings))
    with jax.set_mesh(mesh):
      params, state = train(step, mesh, params, state, 0, STOP)
      # The up kernel's buffers are split over all 8 devices: this process
      # holds half of them.
      buffer = state[0].indices["up/kernel"]
      assert len(buffer.addressable_shards) == LOCAL_DEVICES
      assert not buffer.is_fully_addressable
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(
          checkpoint_path(directory, case),
          {"params": params, "opt_state": state},
        )
        checkpointer.wait_until_finished()
      stopped = flat_arrays((params, state))
      params, state = train(step, mesh, params, state, STOP, TOTAL)
    assert_shardings((params, state), (shardings, state_shardings))
    final = flat_arrays((params, state))
    if jax.process_index() == 0:
      np.savez(results_path(directory, case, "stop"), **stopped)
      np.savez(results_path(directory, case, "total"), **final)
    multihost_utils.sync_global_devices(f"{case} written")


def load_results(directory, case, when, like):
  with np.load(results_path(directory, case, when)) as data:
    return tree_from(dict(data), like)


def assert_matches(ran, expected, case):
  """Selections (and counts) bit for bit; floats to float32 rounding.

  The runs compile to different programs (another layout, another device
  count, gloo's all-reduce in place of one process's), so sums and
  divisions differ in their last bits, and the differences compound over
  the steps. Moments stored in bfloat16 round stochastically, and such a
  difference can flip one rounding: a bfloat16 unit in the last place
  (2**-7 relative) in that moment, and up to that fraction of one step's
  update, ``LEARNING_RATE * 2**-7``, in its param.
  """
  params, state = ran
  expected_params, expected_state = expected
  for tree, expected_tree, is_params in (
    (params, expected_params, True),
    (state, expected_state, False),
  ):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    other = jax.tree.leaves(expected_tree)
    assert len(leaves) == len(other), (len(leaves), len(other))
    for (path, a), b in zip(leaves, other, strict=True):
      a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
      assert (a.dtype, a.shape) == (b.dtype, b.shape), (name, a.dtype, b.dtype)
      if not jnp.issubdtype(a.dtype, jnp.floating):
        np.testing.assert_array_equal(a, b, err_msg=name)
        continue
      sixteen_bit = a.dtype == jnp.bfloat16
      a, b = a.astype(np.float64), b.astype(np.float64)
      scale = float(np.abs(b).max(initial=0.0)) or 1.0
      if is_params:
        rtol, atol = 1e-5, 1e-6 * scale
        if "mu_dtype" in CASES[case]:
          atol = LEARNING_RATE * 2**-7
      else:
        rtol, atol = (2**-7 if sixteen_bit else 1e-4), 1e-6 * scale
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


def check_reference(directory, case):
  """One process with 8 devices, the same mesh and steps, uninterrupted."""
  tx = make_tx(case)
  mesh = make_mesh()
  params, state, shardings, state_shardings = init_sharded(tx, mesh)
  step = make_step(tx, (shardings, state_shardings))
  with jax.set_mesh(mesh):
    params, state = train(step, mesh, params, state, 0, TOTAL)
  ran = jax.tree.map(np.asarray, (params, state))
  expected = load_results(directory, case, "total", ran)
  assert int(state[0].count) == TOTAL
  assert_matches(ran, expected, case)
  # Training did something: the loss fell and entries moved.
  x, y = global_batch(TOTAL)
  first, last = loss_fn(make_params(), x, y), loss_fn(ran[0], x, y)
  assert last < 0.9 * first, (first, last)
  moved = ran[0]["up/kernel"] != make_params()["up/kernel"]
  assert 0 < moved.mean() <= 0.75, moved.mean()


def check_resume(directory, case):
  """One process, one device: restore the two processes' checkpoint with
  shardings for this layout, train on, match the uninterrupted run."""
  assert jax.device_count() == 1
  tx = make_tx(case)
  mesh = make_mesh((1,), ("fsdp",))
  shardings = param_shardings(mesh)
  abstract_params = jax.eval_shape(make_params)
  abstract_state = jax.eval_shape(tx.init, abstract_params)
  state_shardings = na.state_shardings(abstract_state, shardings)
  target = {
    "params": with_shardings(abstract_params, shardings),
    "opt_state": with_shardings(abstract_state, state_shardings),
  }
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(checkpoint_path(directory, case), target)
  params, state = restored["params"], restored["opt_state"]
  assert_shardings((params, state), (shardings, state_shardings))
  like = jax.tree.map(np.asarray, (params, state))
  # What the two processes saved is what they held at the stop, exactly.
  assert_same_run(like, load_results(directory, case, "stop", like), 0, 0)
  assert int(state[0].count) == STOP
  step = make_step(tx, (shardings, state_shardings))
  with jax.set_mesh(mesh):
    params, state = train(step, mesh, params, state, STOP, TOTAL)
  ran = jax.tree.map(np.asarray, (params, state))
  assert int(ran[1][0].count) == TOTAL
  # The re-selections after the stop changed the restored selection.
  assert not np.array_equal(
    ran[1][0].indices["up/kernel"], like[1][0].indices["up/kernel"]
  )
  assert_matches(ran, load_results(directory, case, "total", ran), case)


def main(argv):
  out_path, mode, directory = argv[:3]
  if mode == "train":
    port, process_id = int(argv[3]), int(argv[4])
    force_host_devices(LOCAL_DEVICES)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{port}",
      num_processes=PROCESSES,
      process_id=process_id,
      initialization_timeout=120,
    )
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("error")
        with jax.numpy_dtype_promotion("strict"):
          train_processes(directory)
      with open(out_path, "w") as file:
        json.dump(
          {"devices": jax.device_count(), "process": jax.process_index()}, file
        )
    finally:
      jax.distributed.shutdown()
    return
  if mode == "reference":
    force_host_devices(PROCESSES * LOCAL_DEVICES)
    check = check_reference
  else:
    check = check_resume
  report_checks(
    out_path,
    {case: functools.partial(check, directory, case) for case in CASES},
  )


if __name__ == "__main__":
  main(sys.argv[1:])
