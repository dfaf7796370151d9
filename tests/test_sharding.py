"""state_shardings, annotate_optimizer_sharding, and runs on 8 CPU devices.

The rules are checked here on an abstract 2x4 mesh (no devices needed). The
runs that need real devices live in tests/sharded_checks.py and execute in a
subprocess, because the host platform splits into 8 devices only when
``XLA_FLAGS`` says so before JAX is imported.
"""

import pathlib

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nanoadam_jax as na
from nanoadam_jax._state import ScaleByNanoAdamState
from tests.conftest import optax_reference
from tests.conftest import run_checks_script

MESH = AbstractMesh((2, 4), ("data", "model"))
CHECKS = pathlib.Path(__file__).with_name("sharded_checks.py")


def shapes(**named_shapes):
  return {
    name: jax.ShapeDtypeStruct(shape, jnp.float32)
    for name, shape in named_shapes.items()
  }


def specs_of(tree):
  return jax.tree.map(lambda sharding: sharding.spec, tree)


@pytest.mark.parametrize(
  ("shape", "spec", "expected"),
  [
    ((32, 64), P("data", "model"), P(("data", "model"))),  # k=256 over 8
    ((8, 12), P("data", "model"), P("data")),  # k=12: 8 no, 2 yes
    ((10, 12), P(None, "model"), P()),  # k=15 over nothing
    ((64, 16), P(("model", "data"), None), P(("model", "data"))),
    ((64, 16), P(), P()),  # a replicated param keeps replicated buffers
  ],
)
def test_sparse_buffers_split_over_the_params_axes(shape, spec, expected):
  tx = na.nanoadam(1e-3, density=0.125)
  state = jax.eval_shape(tx.init, shapes(w=shape))
  shardings = na.state_shardings(state, {"w": spec}, mesh=MESH)
  nano = shardings[0]
  assert nano.indices["w"].spec == expected
  assert nano.mu["w"].spec == expected
  assert nano.nu["w"].spec == expected
  assert nano.count.spec == P()
  assert shardings[0].indices["w"].mesh == MESH


def test_dense_and_frozen_leaves_follow_the_param():
  params = shapes(w=(32, 64), norm=(64,))
  params["step"] = jax.ShapeDtypeStruct((8, 8), jnp.int32)
  tx = na.nanoadam(1e-3, density=0.125, exclude="norm|step")
  state = jax.eval_shape(tx.init, params)
  param_specs = {"w": P("data", None), "norm": P("model"), "step": P("data")}
  nano = na.state_shardings(state, param_specs, mesh=MESH)[0]
  assert nano.mu["w"].spec == P("data")  # the sparse buffer
  assert nano.mu["norm"].spec == P("model")  # dense moments, like the param
  assert nano.nu["norm"].spec == P("model")
  # No index buffer for a dense leaf, no moments for a frozen one: empty
  # placeholders, replicated (or empty nodes, with no sharding at all).
  for placeholder in (nano.indices["norm"], nano.mu["step"], nano.nu["step"]):
    assert all(s.spec == P() for s in jax.tree.leaves(placeholder))


def test_blockwise_buffers_split_along_the_rows():
  # A (rows, k) buffer, as a blockwise layout keeps it: rows split.
  buffers = {"w": jax.ShapeDtypeStruct((16, 8), jnp.int16)}
  moments = {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32)}
  state = ScaleByNanoAdamState(
    count=jax.ShapeDtypeStruct((), jnp.int32),
    indices=buffers,
    mu=moments,
    nu=moments,
  )
  shardings = na.state_shardings(state, {"w": P("data", None)}, mesh=MESH)
  assert shardings.indices["w"].spec == P("data")
  assert shardings.nu["w"].spec == P("data")


def test_finds_nanoadam_inside_wrappers():
  params = shapes(w=(32, 64), b=(64,))
  static = ("density", "mask_interval", "seed", "exclude")
  tx = optax.MultiSteps(
    optax.apply_if_finite(
      optax.inject_hyperparams(na.nanoadam, static_args=static)(
        learning_rate=optax.linear_schedule(1e-3, 0.0, 100),
        density=0.125,
        exclude="b",
      ),
      max_consecutive_errors=3,
    ),
    every_k_schedule=2,
  )
  with optax_reference():
    state = jax.eval_shape(tx.init, params)
  param_specs = {"w": P("data", "model"), "b": P("model")}
  shardings = na.state_shardings(state, param_specs, mesh=MESH)
  assert specs_of(shardings.acc_grads) == param_specs
  finite = shardings.inner_opt_state
  assert finite.notfinite_count.spec == P()
  injected = finite.inner_state
  assert injected.hyperparams["learning_rate"].spec == P()
  assert injected.count.spec == P()
  chain = injected.inner_state
  assert chain[0].indices["w"].spec == P(("data", "model"))
  assert chain[0].mu["b"].spec == P("model")
  assert isinstance(chain[0], ScaleByNanoAdamState)
  assert chain[1] == optax.EmptyState()
  # Every array of the state got a sharding.
  assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(state))


def test_multi_transform_shards_masked_states_too():
  params = shapes(body=(32, 64), head=(64, 8))
  tx = optax.multi_transform(
    {"sparse": na.nanoadam(1e-3, density=0.125), "dense": optax.adam(1e-3)},
    {"body": "sparse", "head": "dense"},
  )
  with optax_reference():
    state = jax.eval_shape(tx.init, params)
  param_specs = {"body": P("data", "model"), "head": P("model", None)}
  shardings = na.state_shardings(state, param_specs, mesh=MESH)
  nano = shardings.inner_states["sparse"].inner_state[0]
  assert nano.indices["body"].spec == P(("data", "model"))
  adam = shardings.inner_states["dense"].inner_state[0]
  assert adam.mu["head"].spec == P("model", None)


def test_mesh_comes_from_named_shardings_or_set_mesh():
  mesh = jax.make_mesh((1,), ("fsdp",))
  tx = na.nanoadam(1e-3, density=0.5)
  state = jax.eval_shape(tx.init, shapes(w=(8, 4)))
  named = na.state_shardings(state, {"w": NamedSharding(mesh, P("fsdp"))})
  assert named[0].mu["w"] == NamedSharding(mesh, P("fsdp"))
  with pytest.raises(ValueError, match="mesh"):
    na.state_shardings(state, {"w": P("fsdp")})
  with jax.set_mesh(mesh):
    ambient = na.state_shardings(state, {"w": P("fsdp")})
  assert ambient[0].mu["w"] == NamedSharding(mesh, P("fsdp"))


def test_bad_param_shardings_name_the_leaf():
  tx = na.nanoadam(1e-3, density=0.5)
  state = jax.eval_shape(tx.init, shapes(w=(8, 4), b=(4,)))
  with pytest.raises(ValueError, match="'b'"):
    na.state_shardings(state, {"w": P()}, mesh=MESH)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = na.state_shardings(state, {"w": device, "b": None}, mesh=MESH)
  assert shardings[0].mu["w"].spec == P()


def test_a_mesh_axis_the_mesh_lacks_names_param_axis_and_mesh_axes():
  tx = na.nanoadam(1e-3, density=0.5)
  state = jax.eval_shape(tx.init, shapes(w=(8, 4), b=(4,)))
  message = r"'w'.*axis 'y'.*\('data', 'model'\)"
  with pytest.raises(ValueError, match=message):
    na.state_shardings(state, {"w": P(("data", "y")), "b": P()}, mesh=MESH)


def test_jit_init_and_device_put_on_one_device():
  mesh = jax.make_mesh((1,), ("fsdp",))
  params = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)}
  param_shardings = {"w": NamedSharding(mesh, P("fsdp", None))}
  tx = na.nanoadam(1e-3, density=0.25, mask_interval=2)
  shardings = na.state_shardings(
    jax.eval_shape(tx.init, params), param_shardings
  )
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  assert state[0].indices["w"].sharding == shardings[0].indices["w"]
  placed = jax.device_put(tx.init(params), shardings)
  assert placed[0].mu["w"].sharding == shardings[0].mu["w"]


def test_annotate_optimizer_sharding_on_one_device():
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  # In a Sequential the LayerNorm's path is "layers/1/...": "norm" would
  # match nothing (and init warns about that).
  tx = na.nanoadam(1e-3, density=0.125, exclude="layers/1/")
  with jax.set_mesh(mesh):
    model = nnx.Sequential(
      nnx.Linear(
        16,
        32,
        kernel_init=nnx.with_partitioning(
          nnx.initializers.lecun_normal(), ("data", "model")
        ),
        rngs=nnx.Rngs(0),
      ),
      nnx.LayerNorm(
        32,
        scale_init=nnx.with_partitioning(
          nnx.initializers.ones_init(), ("model",)
        ),
        rngs=nnx.Rngs(0),
      ),
    )
    na.annotate_optimizer_sharding(nnx.state(model, nnx.Param), tx)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  kernel = model.layers[0].kernel
  assert kernel.get_metadata()["optimizer_sharding"] == P(("data", "model"))
  assert model.layers[1].scale.get_metadata()["optimizer_sharding"] == P(
    "model"
  )
  buffer = optimizer.opt_state[0].mu["layers"][0]["kernel"]
  assert buffer.get_value().shape == (64,)
  assert nnx.get_partition_spec(buffer).get_value() == P(("data", "model"))
  scale = optimizer.opt_state[0].mu["layers"][1]["scale"]
  assert scale.get_value().shape == (32,)  # dense AdamW: the param's shape


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
  """Runs tests/sharded_checks.py once on 8 host devices."""
  out = tmp_path_factory.mktemp("sharded") / "results.json"
  results = run_checks_script(CHECKS, str(out))
  assert results["devices"] == 8
  return results["results"]


def expect_ok(result):
  assert result["ok"], result["error"]


def test_fsdp_run_matches_single_device_and_keeps_shardings(sharded_results):
  expect_ok(sharded_results["fsdp_matches_single_device"])


def test_orbax_restores_a_sharded_state_and_resumes(sharded_results):
  expect_ok(sharded_results["orbax_sharded_resume"])


def test_blockwise_buffers_shard_along_rows_under_jit(sharded_results):
  expect_ok(sharded_results["blockwise_fsdp"])


def test_wrapped_states_shard_under_jit(sharded_results):
  expect_ok(sharded_results["wrapped_states"])


def test_nnx_optimizer_with_sharded_params(sharded_results):
  expect_ok(sharded_results["nnx_optimizer"])


def test_explicit_axes_mesh(sharded_results):
  expect_ok(sharded_results["explicit_axes"])


def test_block_selection_is_shard_local(sharded_results):
  expect_ok(sharded_results["block_selection_is_shard_local"])
