"""Property-based tests: the contract of SPEC.md over random configurations.

Hypothesis draws parameter trees (scalars, size-1, empty and odd-sized
tensors of 1 to 3 dims in float32, bfloat16 and float16) and optimizer
configurations, then runs a few steps and checks, every step, what SPEC.md
promises whatever the numbers: shapes and dtypes, the size of the selection,
the index buffers, and that unselected entries never move. ``k`` and ``k_t``
are computed here from SPEC.md, independently of the package.

Each example compiles one ``jax.jit(tx.update)`` (eager dispatch of the
selection's ``lax.cond`` is slower still), so the example count is modest;
raise it with ``NANOADAM_PROPERTY_EXAMPLES=500`` for a longer search.
"""

import math
import os
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nanoadam_jax as na

# Short runs with schedules that would leave (0, density] later, and
# schedules outside it on purpose (the clamping is part of the contract).
pytestmark = pytest.mark.filterwarnings(
  "ignore:`density_schedule` leaves:UserWarning"
)

STEPS = 8
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Fractions as a user writes them; SPEC.md's ceil(density * n) is read with
# the decimal value, e.g. 0.07 of 100 entries is 7.
FRACTIONS = (0.01, 0.07, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 1.0)

PROPERTY_SETTINGS = settings(
  max_examples=int(os.environ.get("NANOADAM_PROPERTY_EXAMPLES", "25")),
  deadline=None,
  # The autouse strict-promotion fixture wraps all examples alike.
  suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def ceil_fraction(fraction: float, n: int) -> int:
  return math.ceil(Fraction(repr(fraction)) * n)


def buffer_size(density: float, n: int) -> int:
  """SPEC.md: ``k = max(1, ceil(density * n))``, 0 for an empty tensor."""
  return 0 if n == 0 else max(1, ceil_fraction(density, n))


def active_size(config: dict, step: int, n: int) -> int:
  """SPEC.md's ``k_t`` at ``step`` for a tensor of ``n`` entries."""
  k = buffer_size(config["density"], n)
  schedule = config["schedule"]
  if schedule is None or k == 0:
    return k
  interval, cut, high, low = schedule
  read_at = step - step % interval
  fraction = min(high if read_at < cut else low, config["density"])
  return min(max(ceil_fraction(fraction, n), 1), k)


@st.composite
def param_trees(draw):
  """1 to 3 leaves of 0 to 3 dims (sides 0 to 7), with random values."""
  count = draw(st.integers(1, 3))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  params = {}
  for i in range(count):
    shape = draw(
      hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)
    )
    dtype = draw(st.sampled_from(DTYPES))
    params[f"leaf{i}"] = jnp.asarray(rng.normal(size=shape), dtype)
  return params


@st.composite
def configs(draw):
  config = {
    "density": draw(st.sampled_from(FRACTIONS)),
    "mask_interval": draw(st.integers(1, 4)),
    "moments": draw(st.sampled_from(na.MOMENTS)),
    "select": draw(st.sampled_from(na.SELECT_RULES)),
    "mu_dtype": draw(st.sampled_from((None, jnp.float32, jnp.bfloat16))),
    "nu_dtype": draw(st.sampled_from((None, jnp.float32, jnp.bfloat16))),
    "rounding": draw(st.sampled_from(("stochastic", "nearest"))),
    "schedule": None,
  }
  if draw(st.booleans()):
    config["schedule"] = (
      draw(st.integers(1, 4)),  # density_interval
      draw(st.integers(0, STEPS)),  # the step where the fraction drops
      draw(st.sampled_from(FRACTIONS)),
      draw(st.sampled_from(FRACTIONS)),
    )
  return config


def make_tx(config):
  options = {
    key: config[key]
    for key in (
      "density",
      "mask_interval",
      "moments",
      "select",
      "mu_dtype",
      "nu_dtype",
      "rounding",
    )
  }
  if config["schedule"] is not None:
    interval, cut, high, low = config["schedule"]
    options["density_schedule"] = lambda step: jnp.where(
      step < cut, jnp.float32(high), jnp.float32(low)
    )
    options["density_interval"] = interval
  return na.nanoadam(0.1, seed=7, **options)


def bits(x):
  """The raw bits of a float array, for bit-for-bit comparisons."""
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}")) if x.size else x


def check_buffer(buffer, k, dtype, name):
  """A ``(k,)`` buffer of ``dtype``; for ``k == 0`` an empty node will do."""
  if k == 0 and not jax.tree.leaves(buffer):
    return
  assert buffer.shape == (k,), (name, buffer.shape, k)
  assert buffer.dtype == dtype, (name, buffer.dtype, dtype)


def check_state_layout(state, params, config):
  nano = state[0]
  assert nano.count.shape == () and nano.count.dtype == jnp.int32
  for name, param in params.items():
    k = buffer_size(config["density"], param.size)
    check_buffer(nano.indices[name], k, jnp.int32, name)
    check_buffer(nano.mu[name], k, config["mu_dtype"] or param.dtype, name)
    check_buffer(nano.nu[name], k, config["nu_dtype"] or param.dtype, name)


@PROPERTY_SETTINGS
@given(params=param_trees(), config=configs(), grad_seed=st.integers(0, 99))
def test_every_step_keeps_the_contract(params, config, grad_seed):
  tx = make_tx(config)
  state = tx.init(params)
  check_state_layout(state, params, config)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(grad_seed)
  start = params
  ever_selected = {name: np.zeros(p.size, bool) for name, p in params.items()}
  for step in range(STEPS):
    grads = {
      name: jnp.asarray(rng.normal(size=p.shape), p.dtype)
      for name, p in params.items()
    }
    updates, state = update(grads, state, params)
    check_state_layout(state, params, config)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    nano = state[0]
    assert int(nano.count) == step + 1
    for name, param in params.items():
      n = param.size
      k_t = active_size(config, step, n)
      u = updates[name]
      assert u.shape == param.shape and u.dtype == param.dtype, name
      if n == 0:
        continue
      indices = np.asarray(nano.indices[name])
      active = indices[:k_t]
      assert np.all((active >= 0) & (active < n)), (name, indices)
      assert np.all(np.diff(active) > 0), (name, indices)  # ascending, unique
      moved = np.flatnonzero(np.asarray(u, np.float32).reshape(-1))
      assert moved.size <= k_t, (name, moved.size, k_t)
      assert np.isin(moved, active).all(), (name, moved, active)
      ever_selected[name][active] = True
    params = optax.apply_updates(params, updates)

  for name, param in params.items():
    never = ~ever_selected[name]
    flat, flat_start = param.reshape(-1), start[name].reshape(-1)
    np.testing.assert_array_equal(bits(flat[never]), bits(flat_start[never]))


def test_ten_thousand_scanned_steps_stay_finite():
  params = {
    "w": jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32).reshape(8, 8),
    "b": jnp.zeros(5, jnp.float32),
    "h": jnp.linspace(-0.5, 0.5, 12, dtype=jnp.bfloat16),
  }
  tx = na.nanoadam(1e-2, density=0.1, mask_interval=10, weight_decay=1e-3)
  key = jax.random.key(0)

  def step(carry, t):
    params, state = carry
    keys = jax.random.split(jax.random.fold_in(key, t), len(params))
    grads = {
      name: jax.random.normal(k, p.shape, p.dtype)
      for k, (name, p) in zip(keys, sorted(params.items()), strict=True)
    }
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  @jax.jit
  def run(params):
    steps = jnp.arange(10_000, dtype=jnp.int32)
    return jax.lax.scan(step, (params, tx.init(params)), steps)[0]

  final, state = run(params)
  assert int(state[0].count) == 10_000
  for leaf in jax.tree.leaves((final, state)):
    assert bool(jnp.all(jnp.isfinite(leaf))), leaf
  # A thousand re-selections moved more than one buffer's worth of w.
  assert int(jnp.sum(final["w"] != params["w"])) > 7
