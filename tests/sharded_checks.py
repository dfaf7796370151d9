"""Multi-device checks of NanoAdam, run by tests/test_sharding.py.

The host platform only splits into several CPU devices when ``XLA_FLAGS``
asks for them before JAX creates its backend, which the pytest process (where
other tests already ran computations) cannot do; test_sharding.py therefore
runs this file in a fresh interpreter:

  python tests/sharded_checks.py OUT.json [CHECK ...]

(tests/test_export.py runs the ``EXPORT_CHECKS`` the same way.)

Each check is independent; the JSON maps its name to ``{"ok": bool,
"error": str}``. Importing this module has no side effects (pytest's
``--doctest-modules`` imports it): the device count is set in ``__main__``,
before anything touches a device.
"""

import json
import os
import pathlib
import sys
import tempfile
import traceback
import warnings

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

DEVICES = 8

STEPS = 20
MASK_INTERVAL = 5  # re-selections at steps 0, 5, 10 and 15
DENSITY = 0.125

# name: (shape, spec). The buffers' expected specs follow from k:
# encoder k=256 -> ("data", "model"); decoder k=128 -> "model"; embed
# k=120 -> "data"; odd k=15 -> replicated; bias k=2 -> replicated; the
# excluded norm keeps dense moments sharded like itself.
LAYOUT = {
  "encoder/kernel": ((32, 64), P("data", "model")),
  "decoder/kernel": ((64, 16), P("model", None)),
  "embed": ((40, 24), P("data", None)),
  "odd": ((10, 12), P(None, "model")),
  "norm/scale": ((64,), P("model")),
  "bias": ((16,), P()),
}
EXPECTED_BUFFER_SPECS = {
  "encoder/kernel": P(("data", "model")),
  "decoder/kernel": P("model"),
  "embed": P("data"),
  "odd": P(),
  "bias": P(),
}


def make_mesh(axis_type):
  return jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)


def make_params():
  rng = np.random.default_rng(0)
  return {
    name: rng.normal(size=shape).astype(np.float32)
    for name, (shape, _) in LAYOUT.items()
  }


def make_grads(params, steps):
  rng = np.random.default_rng(1)
  return [
    {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    for _ in range(steps)
  ]


def param_shardings(mesh):
  return {name: NamedSharding(mesh, spec) for name, (_, spec) in LAYOUT.items()}


def make_tx():
  return na.nanoadam(
    1e-2,
    density=DENSITY,
    mask_interval=MASK_INTERVAL,
    weight_decay=0.01,
    exclude="norm",
  )


def train(tx, params, grads, in_shardings=None, state_shardings=None):
  """Runs the jitted steps; shards params, grads and state when asked."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if in_shardings is None:
    state = tx.init(params)
    jitted = jax.jit(step)
  else:
    params = jax.device_put(params, in_shardings)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    jitted = jax.jit(
      step,
      out_shardings=(in_shardings, state_shardings),
      donate_argnums=(0, 1),
    )
  for grad in grads:
    if in_shardings is not None:
      grad = jax.device_put(grad, in_shardings)
    params, state = jitted(params, state, grad)
  return params, state


def assert_shardings(tree, shardings):
  leaves = jax.tree.leaves(tree)
  expected = jax.tree.leaves(shardings)
  assert len(leaves) == len(expected), (len(leaves), len(expected))
  for leaf, sharding in zip(leaves, expected, strict=True):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
      leaf.shape,
      leaf.sharding,
      sharding,
    )


def assert_same_run(sharded, single):
  """Indices and counts bit for bit; floats to an ulp or so.

  XLA compiles a different program for every layout (the SPMD partitioner
  splits, fuses and vectorizes the loops differently), and on CPU that changes
  the last bit of some divisions and fused multiply-adds; plain element-wise
  Adam happens to stay bit-identical, NanoAdam's gathered direction does not.
  The selections, which decide which entries ever move, must agree exactly.
  """
  (params, state), (params_1, state_1) = sharded, single
  nano, nano_1 = state[0], state_1[0]
  np.testing.assert_array_equal(nano.count, nano_1.count)
  for name in params:
    np.testing.assert_array_equal(nano.indices[name], nano_1.indices[name])
  for a, b in zip(
    jax.tree.leaves((params, nano.mu, nano.nu)),
    jax.tree.leaves((params_1, nano_1.mu, nano_1.nu)),
    strict=True,
  ):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-7
    )


def check_fsdp_matches_single_device():
  mesh = make_mesh(AxisType.Auto)
  params, tx = make_params(), make_tx()
  grads = make_grads(params, STEPS)
  shardings = param_shardings(mesh)
  predicted = na.state_shardings(jax.eval_shape(tx.init, params), shardings)
  nano = predicted[0]
  for name, spec in EXPECTED_BUFFER_SPECS.items():
    for tree in (nano.indices, nano.mu, nano.nu):
      assert tree[name].spec == spec, (name, tree[name].spec, spec)
  assert nano.mu["norm/scale"].spec == P("model")
  assert nano.count.spec == P()

  with jax.set_mesh(mesh):
    sharded = train(tx, params, grads, shardings, predicted)
  assert_shardings(sharded[0], shardings)
  assert_shardings(sharded[1], predicted)
  assert_same_run(sharded, train(tx, params, grads))
  # The entries never selected did not move, on any shard.
  state = sharded[1][0]
  for name in EXPECTED_BUFFER_SPECS:
    moved = np.asarray(sharded[0][name]) != params[name]
    assert moved.sum() <= STEPS // MASK_INTERVAL * state.indices[name].size

  # jax.device_put with the same shardings places an eager state alike.
  placed = jax.device_put(tx.init(params), predicted)
  assert_shardings(placed, predicted)


def check_orbax_sharded_resume():
  """Save a sharded state at step 7, restore it sharded, resume to step 12.

  The restore target is the abstract state with the predicted shardings, so
  orbax reads every buffer straight onto its devices.
  """
  mesh = make_mesh(AxisType.Auto)
  params = make_params()
  # No excluded leaf: orbax refuses to save the (0,) placeholders of one.
  tx = na.nanoadam(1e-2, density=DENSITY, mask_interval=MASK_INTERVAL)
  grads = make_grads(params, 12)
  shardings = param_shardings(mesh)
  abstract = jax.eval_shape(tx.init, params)
  predicted = na.state_shardings(abstract, shardings)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def run(params, state, grads):
    for grad in grads:
      params, state = step(params, state, jax.device_put(grad, shardings))
    return params, state

  with jax.set_mesh(mesh):
    start = jax.device_put(params, shardings)
    first = jax.jit(tx.init, out_shardings=predicted)(start)
    expected = run(start, first, grads)
    stopped = run(start, first, grads[:7])
    with tempfile.TemporaryDirectory() as directory:
      path = pathlib.Path(directory) / "step_7"
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, {"params": stopped[0], "opt_state": stopped[1]})
        checkpointer.wait_until_finished()
      target = {
        "params": jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          jax.eval_shape(lambda: params),
          shardings,
        ),
        "opt_state": jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          abstract,
          predicted,
        ),
      }
      with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(path, target)
    assert_shardings(restored["opt_state"], predicted)
    assert_shardings(restored["params"], shardings)
    resumed = run(restored["params"], restored["opt_state"], grads[7:])
  for a, b in zip(
    jax.tree.leaves(resumed), jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert_shardings(resumed[1], predicted)


def check_blockwise_fsdp():
  """Block granularity: the (rows, k) buffers split along their rows."""
  mesh = make_mesh(AxisType.Auto)
  params = make_params()
  tx = na.nanoadam(
    1e-2,
    density=DENSITY,
    mask_interval=MASK_INTERVAL,
    exclude="norm",
    granularity="block",
    block_size=256,
  )
  grads = make_grads(params, 12)
  shardings = param_shardings(mesh)
  predicted = na.state_shardings(jax.eval_shape(tx.init, params), shardings)
  nano = predicted[0]
  expected = {
    "encoder/kernel": P(("data", "model")),  # 8 blocks over 8 devices
    "decoder/kernel": P("model"),  # 4 blocks
    "embed": P("data"),  # 4 blocks, the last one padded
    "odd": P(),  # a single block
    "bias": P(),
  }
  for name, spec in expected.items():
    assert nano.indices[name].spec == spec, (name, nano.indices[name].spec)
  with jax.set_mesh(mesh):
    sharded = train(tx, params, grads, shardings, predicted)
  assert_shardings(sharded[1], predicted)
  assert_same_run(sharded, train(tx, params, grads))


def check_wrapped_states():
  """MultiSteps around inject_hyperparams around nanoadam, jitted."""
  mesh = make_mesh(AxisType.Auto)
  params = make_params()
  shardings = param_shardings(mesh)
  static = ("density", "mask_interval", "seed", "exclude")
  tx = optax.MultiSteps(
    optax.inject_hyperparams(na.nanoadam, static_args=static)(
      learning_rate=1e-2,
      density=DENSITY,
      mask_interval=2,
      exclude="norm",
    ),
    every_k_schedule=2,
  )
  with jax.numpy_dtype_promotion("standard"):  # MultiSteps mixes dtypes
    predicted = na.state_shardings(jax.eval_shape(tx.init, params), shardings)
    assert predicted.acc_grads["encoder/kernel"].spec == P("data", "model")
    inner = predicted.inner_opt_state
    assert inner.hyperparams["learning_rate"].spec == P()
    buffer = inner.inner_state[0].indices["encoder/kernel"]
    assert buffer.spec == P(("data", "model"))
    with jax.set_mesh(mesh):
      _, state = train(tx, params, make_grads(params, 6), shardings, predicted)
  assert_shardings(state, predicted)
  assert int(state.gradient_step) == 3


class Model(nnx.Module):
  """A small MLP whose kernels are split over both mesh axes."""

  def __init__(self, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    split = nnx.with_partitioning
    self.up = nnx.Linear(
      32,
      64,
      kernel_init=split(init, ("data", "model")),
      bias_init=split(nnx.initializers.zeros_init(), ("model",)),
      rngs=rngs,
    )
    self.norm = nnx.LayerNorm(
      64,
      scale_init=split(nnx.initializers.ones_init(), ("model",)),
      bias_init=split(nnx.initializers.zeros_init(), ("model",)),
      rngs=rngs,
    )
    self.down = nnx.Linear(
      64, 8, kernel_init=split(init, ("model", None)), rngs=rngs
    )

  def __call__(self, x):
    return self.down(nnx.relu(self.norm(self.up(x))))


def nnx_run(model, tx, steps):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(16, 32)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)

  @nnx.jit
  def train_step(model, optimizer):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  losses = [float(train_step(model, optimizer)) for _ in range(steps)]
  return optimizer, losses


def check_nnx_optimizer():
  mesh = make_mesh(AxisType.Auto)
  tx = na.nanoadam(1e-2, density=DENSITY, mask_interval=4, exclude="norm")
  with jax.set_mesh(mesh):
    model = Model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    na.annotate_optimizer_sharding(params, tx)
    sharded_optimizer, losses = nnx_run(model, tx, 12)
  assert losses[-1] < losses[0], losses

  # The optimizer's arrays and its metadata both follow state_shardings.
  pure = nnx.as_pure(params)
  predicted = na.state_shardings(
    jax.eval_shape(tx.init, pure), jax.tree.map(lambda x: x.sharding, pure)
  )
  state = nnx.as_pure(sharded_optimizer.opt_state)
  assert_shardings(state, predicted)
  kernel = sharded_optimizer.opt_state[0].indices["up"]["kernel"]
  assert kernel.get_value().shape == (256,)
  assert nnx.get_partition_spec(kernel).get_value() == P(("data", "model"))

  # The same run on one device, without sharding annotations applied. The
  # sharded matmuls sum in another order, so the gradients, and with them
  # the params, agree to float32 rounding only.
  with nnx.use_eager_sharding(False):
    reference = Model(nnx.Rngs(0))
  _, reference_losses = nnx_run(reference, tx, 12)
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-4)
  for a, b in zip(
    jax.tree.leaves(nnx.state(model, nnx.Param)),
    jax.tree.leaves(nnx.state(reference, nnx.Param)),
    strict=True,
  ):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6
    )


def check_explicit_axes():
  """A mesh with Explicit axes (jax.make_mesh's default) and sharded types."""
  mesh = make_mesh(AxisType.Explicit)
  params, tx = make_params(), make_tx()
  grads = make_grads(params, 8)
  shardings = param_shardings(mesh)
  predicted = na.state_shardings(jax.eval_shape(tx.init, params), shardings)
  with jax.set_mesh(mesh):
    sharded = train(tx, params, grads, shardings, predicted)
  assert_shardings(sharded[1], predicted)
  assert_same_run(sharded, train(tx, params, grads))


def check_block_selection_is_shard_local():
  """Blocks that line up with the param's shards select without moving it.

  The compiled re-selection step of a (64, 128) param split by rows over 8
  devices, with one 1024-entry block per device, holds no all-gather and no
  all-to-all, and reduces nothing larger than a scalar; per-tensor selection
  of the same param does gather it.
  """
  mesh = jax.make_mesh((DEVICES,), ("fsdp",), axis_types=(AxisType.Auto,))
  rng = np.random.default_rng(0)
  shardings = {"w": NamedSharding(mesh, P("fsdp", None))}
  params = jax.device_put(
    {"w": rng.normal(size=(64, 128)).astype(np.float32)}, shardings
  )

  def collectives(tx):
    state_sharding = na.state_shardings(
      jax.eval_shape(tx.init, params), shardings
    )
    state = jax.jit(tx.init, out_shardings=state_sharding)(params)
    step = jax.jit(
      tx.update,
      in_shardings=(shardings, state_sharding, shardings),
      out_shardings=(shardings, state_sharding),
    )
    hlo = step.lower(params, state, params).compile().as_text()
    kinds = ("all-gather", "all-to-all", "all-reduce", "collective-permute")
    return [
      line.strip()
      for line in hlo.splitlines()
      if " = " in line and any(f" {kind}(" in line for kind in kinds)
    ]

  block = collectives(
    na.scale_by_nanoadam(density=0.125, granularity="block", block_size=1024)
  )
  for line in block:
    assert "all-gather" not in line and "all-to-all" not in line, line
    assert "all-reduce" in line and "[] all-reduce(" in line, line
  tensor = collectives(na.scale_by_nanoadam(density=0.125))
  assert any("all-gather" in line for line in tensor), tensor


def export_explicit(run=False, **options):
  """Exports the sharded init and step for CPU, CUDA, ROCm and TPU.

  On a 2x4 mesh with Explicit axes, params sharded by ``LAYOUT`` and the
  state by ``na.state_shardings``: the exported step keeps those shardings
  in its argument types. With ``run``, the export runs on the 8 CPU devices
  and must compute what the jitted step computes, bit for bit.
  """
  platforms = ("cpu", "cuda", "rocm", "tpu")
  mesh = make_mesh(AxisType.Explicit)
  params = make_params()
  tx = na.nanoadam(
    1e-2, density=DENSITY, mask_interval=2, exclude="norm", **options
  )
  shardings = param_shardings(mesh)
  abstract_state = jax.eval_shape(tx.init, params)
  predicted = na.state_shardings(abstract_state, shardings)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def typed(tree, shardings):
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree,
      shardings,
    )

  with jax.set_mesh(mesh):
    init = jax.jit(tx.init, out_shardings=predicted)
    jitted = jax.jit(step, out_shardings=(shardings, predicted))
    abstract_params = typed(jax.eval_shape(lambda: params), shardings)
    exported_init = jax.export.export(init, platforms=platforms)(
      abstract_params
    )
    exported = jax.export.export(jitted, platforms=platforms)(
      abstract_params, typed(abstract_state, predicted), abstract_params
    )
    for program in (exported_init, exported):
      assert program.platforms == platforms, program.platforms
      assert program.nr_devices == DEVICES, program.nr_devices
    # The shardings are part of the exported types.
    expected = jax.tree.leaves((shardings, predicted, shardings))
    assert len(exported.in_avals) == len(expected)
    for aval, sharding in zip(exported.in_avals, expected, strict=True):
      typed_sharding = NamedSharding(mesh, aval.sharding.spec)
      assert typed_sharding.is_equivalent_to(sharding, aval.ndim), (
        aval,
        sharding.spec,
      )
    buffer = predicted[0].mu["encoder/kernel"].spec
    assert buffer == P(("data", "model")), buffer
    if not run:
      return

    start = jax.device_put(params, shardings)
    ran = (start, exported_init.call(start))
    reference = (start, init(start))
    for grad in make_grads(params, 3):
      grad = jax.device_put(grad, shardings)
      ran = exported.call(*ran, grad)
      reference = jitted(*reference, grad)
  assert_shardings(ran, (shardings, predicted))
  for a, b in zip(
    jax.tree.leaves(ran), jax.tree.leaves(reference), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# Run by tests/test_export.py, not by test_sharding.py.
EXPORT_CHECKS = {
  "export_tensor_auto": lambda: export_explicit(run=True),
  "export_tensor_top_k": lambda: export_explicit(selection="top_k"),
  "export_block_bf16_random": lambda: export_explicit(
    granularity="block",
    block_size=256,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
    select="random",
  ),
}


CHECKS = {
  "fsdp_matches_single_device": check_fsdp_matches_single_device,
  "orbax_sharded_resume": check_orbax_sharded_resume,
  "blockwise_fsdp": check_blockwise_fsdp,
  "wrapped_states": check_wrapped_states,
  "nnx_optimizer": check_nnx_optimizer,
  "explicit_axes": check_explicit_axes,
  "block_selection_is_shard_local": check_block_selection_is_shard_local,
}


def report_checks(out_path, checks):
  """Runs each of ``checks`` (name -> zero-argument callable) with warnings
  as errors and strict dtype promotion, and writes the outcomes as JSON for
  the test that started this process."""
  results = {}
  for name, check in checks.items():
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("error")
        with jax.numpy_dtype_promotion("strict"):
          check()
      results[name] = {"ok": True, "error": ""}
    except Exception:  # noqa: BLE001 - reported to the test, which fails
      results[name] = {"ok": False, "error": traceback.format_exc()}
  with open(out_path, "w") as file:
    json.dump(
      {"devices": jax.device_count(), "results": results}, file, indent=1
    )


def force_host_devices(count):
  """Makes the CPU backend show ``count`` devices. JAX reads XLA_FLAGS when
  it creates its backend, at the first use of a device, which must still be
  ahead."""
  os.environ["XLA_FLAGS"] = " ".join(
    [
      os.environ.get("XLA_FLAGS", ""),
      f"--xla_force_host_platform_device_count={count}",
    ]
  )


def main(out_path, names):
  known = {**CHECKS, **EXPORT_CHECKS}
  report_checks(out_path, {name: known[name] for name in names or CHECKS})


if __name__ == "__main__":
  force_host_devices(DEVICES)
  main(sys.argv[1], sys.argv[2:])
