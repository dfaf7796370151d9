"""Narrow moment storage (issue 9): Optax's mu_dtype meaning, nu_dtype,
stochastic rounding without drift, and the paper's 6 bytes per entry."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nanoadam_jax as na
from tests.conftest import optax_reference


def _params_and_grads(steps=5, n=64):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(8, n // 8)), jnp.float32)}
  grads = [
    {"w": jnp.asarray(rng.normal(size=(8, n // 8)), jnp.float32)}
    for _ in range(steps)
  ]
  return params, grads


def _updates(tx, params, grads):
  state = tx.init(params)
  out = []
  for grad in grads:
    updates, state = tx.update(grad, state, params)
    out.append(updates["w"])
  return out, state


def test_first_update_with_bfloat16_mu_equals_optax():
  """The step uses the unrounded moment, as optax.adamw(mu_dtype=...) does."""
  params, grads = _params_and_grads(steps=1)
  ours, _ = _updates(
    na.nanoadam(1e-2, 1.0, mu_dtype=jnp.bfloat16), params, grads
  )
  with optax_reference():
    theirs, _ = _updates(
      optax.adamw(1e-2, mu_dtype=jnp.bfloat16, weight_decay=0.0),
      params,
      grads,
    )
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-9)


def test_nearest_rounding_stores_the_float32_moment_cast_to_bfloat16():
  """Each step updates the moment in float32 from the stored bfloat16 one and
  stores its nearest bfloat16, as Optax's cast does (a NumPy check)."""
  params, grads = _params_and_grads(steps=6)
  tx = na.nanoadam(1e-2, 1.0, mu_dtype=jnp.bfloat16, rounding="nearest")
  state = tx.init(params)
  for grad in grads:
    before = np.asarray(state[0].mu["w"], np.float32)
    _, state = tx.update(grad, state, params)
    g = np.asarray(grad["w"], np.float32).ravel()
    expected = np.float32(1 - 0.9) * g + np.float32(0.9) * before
    stored = state[0].mu["w"]
    assert stored.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
      np.asarray(stored), expected.astype(jnp.bfloat16)
    )
  assert state[0].nu["w"].dtype == jnp.float32


def _stored_nu_mean(nu_dtype, rounding, kind, steps=8000, n=4096):
  """Mean stored nu after ``steps`` updates of one dense tensor."""
  params = {"w": jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32)}
  tx = na.scale_by_nanoadam(
    1.0, 10**9, nu_dtype=nu_dtype, rounding=rounding, seed=5
  )

  def step(state, key):
    if kind == "constant":
      grad = jnp.full((n,), 0.01, jnp.float32)
    else:
      grad = 0.01 * jax.random.normal(key, (n,), jnp.float32)
    _, state = tx.update({"w": grad}, state, params)
    return state, None

  keys = jax.random.split(jax.random.key(1), steps)
  state, _ = jax.jit(lambda s: jax.lax.scan(step, s, keys))(tx.init(params))
  return float(jnp.mean(state.nu["w"].astype(jnp.float32)))


@pytest.mark.parametrize("kind", ["constant", "gaussian"])
def test_bfloat16_nu_keeps_its_mean_only_with_stochastic_rounding(kind):
  reference = _stored_nu_mean(None, "stochastic", kind)
  stochastic = _stored_nu_mean(jnp.bfloat16, "stochastic", kind)
  nearest = _stored_nu_mean(jnp.bfloat16, "nearest", kind)
  assert abs(stochastic / reference - 1) < 0.03, (stochastic, reference)
  assert abs(nearest / reference - 1) > 0.03, (nearest, reference)


def test_stochastic_rounding_repeats_with_the_seed_and_varies_without():
  params, grads = _params_and_grads(steps=3)
  options = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
  _, first = _updates(na.nanoadam(1e-2, 0.5, seed=1, **options), params, grads)
  _, again = _updates(na.nanoadam(1e-2, 0.5, seed=1, **options), params, grads)
  _, other = _updates(na.nanoadam(1e-2, 0.5, seed=2, **options), params, grads)
  np.testing.assert_array_equal(first[0].nu["w"], again[0].nu["w"])
  assert not np.array_equal(first[0].nu["w"], other[0].nu["w"])


def test_paper_state_is_six_bytes_per_selected_entry():
  """Block mode, int16 indices, bfloat16 mu and nu: at density 0.1 at most
  0.08x optax.adamw's float32 state."""
  params = {
    "embed": jax.ShapeDtypeStruct((30522, 384), jnp.float32),
    "dense": jax.ShapeDtypeStruct((1536, 384), jnp.float32),
  }
  tx = na.nanoadam(
    1e-3,
    0.1,
    granularity="block",
    block_size=4096,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
  )
  state = jax.eval_shape(tx.init, params)
  nano = state[0]
  selected = sum(x.size for x in jax.tree.leaves(nano.indices))
  buffers = na.state_bytes((nano.indices, nano.mu, nano.nu))
  assert buffers == 6 * selected
  adamw = na.state_bytes(jax.eval_shape(optax.adamw(1e-3).init, params))
  assert na.state_bytes(state) <= 0.08 * adamw, na.state_bytes(state) / adamw


def test_excluded_leaves_store_narrow_moments_too():
  params = {"w": jnp.ones((4, 4)), "norm": jnp.ones(4)}
  tx = na.nanoadam(
    1e-3, 0.5, exclude="norm", mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16
  )
  state = tx.update(params, tx.init(params), params)[1][0]
  assert state.mu["norm"].dtype == jnp.bfloat16
  assert state.nu["norm"].dtype == jnp.float16
  assert state.nu["w"].dtype == jnp.float16


def test_float64_params_get_float64_accuracy():
  """Under x64 the bias corrections and moments use the params' precision."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=20), jnp.float64)}
    grads = [{"w": jnp.asarray(rng.normal(size=20), jnp.float64)}]
    ours, _ = _updates(na.nanoadam(1e-2, 1.0), params, grads)
    with optax_reference():
      theirs, _ = _updates(optax.adamw(1e-2, weight_decay=0.0), params, grads)
    assert ours[0].dtype == jnp.float64
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-13)


def test_bad_moment_options_raise():
  with pytest.raises(TypeError, match="nu_dtype"):
    na.nanoadam(1e-3, nu_dtype="nope")
  with pytest.raises(ValueError, match="nu_dtype"):
    na.nanoadam(1e-3, nu_dtype=jnp.int8)
  with pytest.raises(ValueError, match="rounding"):
    na.nanoadam(1e-3, rounding="up")
