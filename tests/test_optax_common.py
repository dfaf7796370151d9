"""Optax's common duties of an optimizer, run on NanoAdam.

Optax holds every contributed optimizer to the same duties in
``optax/contrib/_common_test.py``, which ships in the optax wheel: it accepts
extra arguments and does not recompile on the second call, converges inside a
``lax.scan`` (after ``optax.tree.map_params``), works under
``optax.inject_hyperparams`` with the same updates and state, keeps the
params' dtype, works under ``optax.MultiSteps``, keeps its state's shapes
and dtypes stable across ``update`` in every float dtype, and takes a
learning-rate schedule. The test functions of that file run here as they
are, with NanoAdam in the place of Optax's optimizers. Two names of the
file are replaced for the purpose: its optimizer lookup (to find
``nanoadam``) and ``inject_hyperparams`` (to add the arguments that must stay
static, :data:`STATIC_ARGS`, to the file's own list).
"""

import contextlib
import types

import jax
import jax.numpy as jnp
import optax
import pytest
from absl.testing import parameterized
from optax.contrib import _common_test as common

import nanoadam_jax as na
from tests.conftest import optax_reference

# The arguments that fix buffer sizes, the selection schedule or the code
# path: only these are static under inject_hyperparams. Every other one
# (learning_rate, b1, b2, eps, eps_root, weight_decay, seed) is injected.
STATIC_ARGS = (
  "density",
  "mask_interval",
  "density_interval",
  "block_size",
  "granularity",
  "selection",
  "moments",
  "select",
  "exclude",
  "density_schedule",
)

OPTIMIZERS = {
  "dense": dict(learning_rate=1e-2, density=1.0),
  "half": dict(learning_rate=1e-2, density=0.5),
  # A random half each re-selection; also draws from the injected seed.
  "random-half": dict(learning_rate=1e-2, density=0.5, select="random"),
}

TARGETS = {
  "parabola": common._setup_parabola,
  "rosenbrock": common._setup_rosenbrock,
  "matrix-parabola": common._setup_matrix_parabola,
  "mixed-tensors": common._setup_mixed_tensor_target,
}


class _Duties(parameterized.TestCase):
  """The ``self`` of the suite's test functions. Its ``subTest`` blocks run
  inline, so that a failing check fails the pytest test."""

  __test__ = False  # not a test case of its own

  def runTest(self):  # noqa: N802 (unittest's name)
    pass

  @contextlib.contextmanager
  def subTest(self, msg=None, **params):  # noqa: N802
    del msg, params
    yield


@pytest.fixture(autouse=True)
def nanoadam_in_the_suite(monkeypatch):
  """Points the suite's optimizer lookup and inject_hyperparams at us."""
  lookup = common._get_opt_factory
  monkeypatch.setattr(
    common,
    "_get_opt_factory",
    lambda name: na.nanoadam if name == "nanoadam" else lookup(name),
  )

  def inject_hyperparams(factory, static_args=(), hyperparam_dtype=None):
    static_args = tuple(static_args) + STATIC_ARGS
    return optax.inject_hyperparams(factory, static_args, hyperparam_dtype)

  monkeypatch.setattr(
    common,
    "_inject",
    types.SimpleNamespace(inject_hyperparams=inject_hyperparams),
  )
  # The suite and the Optax code it calls (apply_updates, MultiSteps,
  # inject_hyperparams) are not written for strict dtype promotion.
  with optax_reference():
    yield


def run(duty: str, name: str, **kwargs) -> None:
  """Runs the suite's test function ``duty`` on optimizer ``name``."""
  # absl's parameterized cases (duty0, duty1, ...) wrap the one function.
  function = getattr(common.ContribTest, f"{duty}0").__wrapped__
  function(
    _Duties(),
    opt_name="nanoadam",
    opt_kwargs=dict(OPTIMIZERS[name]),
    wrapper_name=None,
    wrapper_kwargs=None,
    **kwargs,
  )


names = pytest.mark.parametrize("name", list(OPTIMIZERS))


@names
def test_accepts_extra_args_and_compiles_once(name):
  run("test_optimizers_accept_extra_args", name, wrap=False)


@names
@pytest.mark.parametrize("target", list(TARGETS))
def test_converges_inside_a_scan(name, target):
  if name == "half":
    # By design the larger half of each tensor stays frozen, and every
    # target needs it to move (the parabola's 10 -> -1): measured, 0.5 to 11
    # off after 30 000 steps, whatever the mask_interval.
    pytest.skip("the method keeps the larger half frozen")
  if name == "random-half" and target == "rosenbrock":
    # One of its two coordinates at a time cannot follow the curved valley:
    # 0.3 to 0.7 off after 30 000 steps (lr 1e-2 or 3e-3, mask_interval 1,
    # 10 or 100), except 0.029 at lr 3e-3 and mask_interval 1, too close to
    # the 0.03 tolerance to hold.
    pytest.skip("one coordinate at a time does not follow the valley")
  run("test_optimizers", name, target=TARGETS[target], dtype="float32")


@names
def test_works_under_inject_hyperparams(name):
  run("test_optimizers_can_be_wrapped_in_inject_hyperparams", name)


@names
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_updates_keep_the_params_dtype(name, dtype):
  run("test_preserve_dtype", name, dtype=dtype)


@names
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_works_under_multisteps(name, dtype):
  run("test_gradient_accumulation", name, dtype=dtype)


@names
@pytest.mark.parametrize(
  "dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]
)
def test_state_is_shape_dtype_stable(name, dtype):
  run("test_state_shape_dtype_shard_stability", name, dtype=dtype)


@names
def test_accepts_a_learning_rate_schedule(name):
  run(
    "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such",
    name,
  )


def test_every_argument_but_the_static_ones_is_injected():
  """The duty above is meaningful: inject_hyperparams turns all the other
  numeric arguments, defaults included, into traced state."""
  tx = optax.inject_hyperparams(na.nanoadam, STATIC_ARGS)(
    learning_rate=1e-2, density=0.5, select="random"
  )
  state = tx.init([jnp.ones(4)])
  assert set(state.hyperparams) == {
    "learning_rate",
    "b1",
    "b2",
    "eps",
    "eps_root",
    "weight_decay",
    "seed",
  }


@pytest.mark.parametrize(
  ("argument", "value"),
  [
    ("density_schedule", lambda step: 0.25),
    ("exclude", lambda params: jax.tree.map(lambda x: x.ndim < 2, params)),
    ("mask", lambda params: jax.tree.map(lambda x: x.ndim > 1, params)),
    ("mu_dtype", jnp.bfloat16),
  ],
)
def test_callables_outside_static_args_say_to_list_them(argument, value):
  kwargs = dict(learning_rate=1e-2, density=0.5, density_interval=10)
  kwargs[argument] = value
  if argument != "density_schedule":
    kwargs.update(density_schedule=lambda step: 0.25)
  static_args = [name for name in STATIC_ARGS + ("mask",) if name != argument]
  tx = optax.inject_hyperparams(na.nanoadam, static_args)(**kwargs)
  with pytest.raises(TypeError, match=rf"{argument}.*static_args"):
    tx.init({"w": jnp.ones(4)})
