"""Every bad input of SPEC.md raises early, naming the argument or the leaf."""

import inspect
import re
import warnings

import jax
import jax.numpy as jnp
import optax
import pytest

import nanoadam_jax as na

PARAMS = {"layer": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}


@pytest.mark.parametrize(
  ("kwargs", "error", "pattern"),
  [
    (dict(density=0.0), ValueError, "density"),
    (dict(density=-0.1), ValueError, "density"),
    (dict(density=1.5), ValueError, "density"),
    (dict(density=True), TypeError, "density"),
    (dict(density="0.1"), TypeError, "density"),
    (dict(density=jnp.asarray(0.1)), TypeError, "density.*static_args"),
    (dict(mask_interval=0), ValueError, "mask_interval"),
    (dict(mask_interval=2.5), ValueError, "mask_interval"),
    (dict(mask_interval=10.0), ValueError, "mask_interval"),
    (dict(mask_interval=True), ValueError, "mask_interval"),
    (
      dict(density_schedule=lambda t: 0.05),
      ValueError,
      "density_interval",
    ),
    (dict(density_interval=5), ValueError, "density_schedule"),
    (
      dict(density_schedule=lambda t: 0.05, density_interval=0),
      ValueError,
      "density_interval",
    ),
    (
      dict(density_schedule=0.05, density_interval=5),
      TypeError,
      "density_schedule",
    ),
    (dict(b1=1.0), ValueError, "b1"),
    (dict(b1=-0.1), ValueError, "b1"),
    (dict(b2=1.2), ValueError, "b2"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(eps_root=-1.0), ValueError, "eps_root"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
    (dict(moments="keep"), ValueError, "moments"),
    (dict(select="smallest_abs"), ValueError, "select"),
    (dict(exclude=3), TypeError, "exclude"),
    (dict(exclude="head["), ValueError, "exclude"),
    (dict(mu_dtype=jnp.int32), ValueError, "mu_dtype"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(selection="quickselect"), ValueError, "selection"),
    (dict(weight_decay=None), TypeError, "weight_decay"),
    (dict(b1=jnp.array([0.9, 0.9])), TypeError, "b1.*shape"),
    (dict(b1="0.9"), TypeError, "b1"),
    (dict(b2=True), TypeError, "b2"),
    (dict(eps=1e-8j), TypeError, "eps"),
    (dict(mu_dtype="foo"), TypeError, "mu_dtype"),
  ],
)
def test_bad_hyperparameters_raise_at_construction(kwargs, error, pattern):
  with pytest.raises(error, match=pattern):
    na.nanoadam(1e-3, **kwargs)
  with pytest.raises(error, match=pattern):
    na.scale_by_nanoadam(**kwargs)


def test_integer_leaf_is_named_unless_excluded():
  params = {"layer": {"kernel": jnp.ones((4, 3)), "step": jnp.zeros((), int)}}
  with pytest.raises(TypeError, match="layer/step"):
    na.nanoadam(1e-3).init(params)
  with pytest.raises(TypeError, match="'flags'"):
    na.nanoadam(1e-3).init({"flags": jnp.zeros(3, bool)})
  tx = na.scale_by_nanoadam(exclude="step$")
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Excluded non-float leaves are frozen: a zero update of their own dtype.
  assert updates["layer"]["step"].dtype == params["layer"]["step"].dtype
  assert int(updates["layer"]["step"]) == 0
  # optax.scale_by_learning_rate multiplies that zero by a float, which only
  # standard promotion allows; apply_updates then casts back.
  with jax.numpy_dtype_promotion("standard"):
    tx = na.nanoadam(1e-3, exclude="step$")
    updates, _ = tx.update(grads, tx.init(params), params)
    new_params = optax.apply_updates(params, updates)
  assert new_params["layer"]["step"].dtype == params["layer"]["step"].dtype
  assert int(new_params["layer"]["step"]) == 0


def test_update_without_params_raises():
  tx = na.nanoadam(1e-3)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="requires the current value of param"):
    tx.update(PARAMS, state)


def test_gradient_shape_mismatch_names_the_leaf():
  tx = na.nanoadam(1e-3)
  state = tx.init(PARAMS)
  grads = {"layer": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(3)}}
  with pytest.raises(ValueError, match="layer/kernel.*shape"):
    tx.update(grads, state, PARAMS)


def test_gradient_structure_mismatch_is_reported():
  tx = na.nanoadam(1e-3)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="gradient tree"):
    tx.update({"layer": {"kernel": jnp.ones((4, 3))}}, state, PARAMS)


def test_non_array_leaf_is_named():
  with pytest.raises(TypeError, match="'lr'"):
    na.nanoadam(1e-3).init({"w": jnp.ones(3), "lr": "fast"})


def test_traced_hyperparameters_are_not_validated_but_work():
  # Under jit, b1 is a tracer: validation skips it instead of failing.
  @jax.jit
  def step(b1):
    tx = na.scale_by_nanoadam(b1=b1)
    return tx.update(PARAMS, tx.init(PARAMS), PARAMS)[0]

  updates = step(jnp.asarray(0.5))
  assert updates["layer"]["kernel"].shape == (4, 3)


def test_intervals_beyond_int32_mean_never_again():
  """A mask interval past the int32 step count selects once, at step 0."""
  params = {"w": jnp.linspace(-1.0, 1.0, 8)}
  grads = {"w": jnp.ones(8)}
  for interval in (10**10, 2**31 - 1):
    tx = na.nanoadam(0.1, 0.25, interval)
    state = tx.init(params)
    for _ in range(3):
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    assert int((updates["w"] != 0).sum()) == 2, interval


@pytest.mark.parametrize("shape", [(3,), (1,)])
def test_density_schedule_must_return_a_scalar(shape):
  tx = na.nanoadam(
    1e-3,
    density=0.5,
    density_schedule=lambda step: jnp.full(shape, 0.25),
    density_interval=5,
  )
  state = tx.init(PARAMS)
  message = rf"density_schedule.*scalar.*{re.escape(str(shape))}"
  with pytest.raises(ValueError, match=message):
    tx.update(PARAMS, state, PARAMS)


@pytest.mark.parametrize(
  ("built", "used", "message"),
  [
    (
      dict(density=0.5),
      dict(density=1.0),
      r"state.indices for 'layer/bias' has shape \(2,\) but this "
      r"optimizer keeps \(3,\).*another density",
    ),
    (
      dict(exclude="bias"),
      dict(),
      r"state.indices for 'layer/bias' is empty but this optimizer keeps "
      r"\(1,\) \(it trains the leaf sparsely\).*exclude",
    ),
    (
      dict(),
      dict(exclude="bias"),
      r"state.indices for 'layer/bias' is of shape \(1,\) but this optimizer"
      r" keeps none \(it trains the leaf densely\)",
    ),
    (
      dict(granularity="block", block_size=4),
      dict(),
      r"state.indices for 'layer/bias' has shape \(1, 1\).*granularity",
    ),
    (
      dict(granularity="block", block_size=2),
      dict(granularity="block", block_size=4),
      r"state.indices for 'layer/bias' has shape \(2, 1\) but this "
      r"optimizer keeps \(1, 1\).*block_size",
    ),
  ],
  ids=["density", "excluded-before", "excluded-now", "block", "block-size"],
)
def test_state_of_other_hyperparameters_names_leaf_and_difference(
  built, used, message
):
  """What a user restoring a checkpoint after changing hyperparameters
  meets: the leaf and what differs, not a broadcasting error."""
  state = na.nanoadam(1e-3, **built).init(PARAMS)
  with pytest.raises(ValueError, match=message):
    na.nanoadam(1e-3, **used).update(PARAMS, state, PARAMS)
  with pytest.raises(ValueError, match=message):
    jax.jit(na.nanoadam(1e-3, **used).update)(PARAMS, state, PARAMS)


def test_weight_decay_schedule_must_return_a_scalar():
  tx = na.nanoadam(1e-3, weight_decay=lambda step: jnp.full((2,), 0.1))
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"weight_decay.*scalar.*\(2,\)"):
    tx.update(PARAMS, state, PARAMS)


def test_seed_may_be_an_integer_array_even_traced():
  """inject_hyperparams hands seed over as an int32 array (traced under
  jit); jax.random takes one, so we do."""
  params = {"w": jnp.linspace(-1.0, 1.0, 8)}

  def moved(seed):
    tx = na.scale_by_nanoadam(0.25, select="random", seed=seed)
    return tx.update(params, tx.init(params), params)[0]["w"] != 0

  traced = jax.jit(moved)(jnp.asarray(3, jnp.int32))
  assert bool((traced == moved(3)).all()) and int(traced.sum()) == 2
  with pytest.raises(TypeError, match="seed"):
    na.nanoadam(1e-3, seed=jnp.asarray(1.0))
  with pytest.raises(TypeError, match="seed"):
    na.nanoadam(1e-3, seed=jnp.arange(2))


def test_injected_density_schedule_says_to_list_it_in_static_args():
  with pytest.raises(TypeError, match="density_schedule.*static_args"):
    na.nanoadam(1e-3, density_schedule=jnp.asarray(0.1), density_interval=5)


@pytest.mark.parametrize(
  ("schedule", "shown"),
  [
    (lambda t: jnp.float32(0.3), "0.3 at step 0"),  # above density
    (lambda t: jnp.float32(0.0), "0 at step 0"),
    (lambda t: 0.1 - 0.001 * t.astype(jnp.float32), "-0.9 at step 1000"),
    (lambda t: jnp.float32(jnp.nan), "nan at step 0"),
  ],
  ids=["above", "zero", "negative_later", "nan"],
)
def test_a_schedule_outside_the_range_warns_at_construction(schedule, shown):
  with pytest.warns(UserWarning, match="clamps") as caught:
    na.nanoadam(1e-3, 0.1, density_schedule=schedule, density_interval=1)
  assert shown in str(caught[0].message)


def test_a_schedule_within_the_range_does_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    na.nanoadam(
      1e-3,
      0.1,
      density_schedule=lambda t: jnp.float32(0.1) - 0 * t.astype(jnp.float32),
      density_interval=5,
    )


def test_an_exclude_callable_of_three_arguments_is_named():
  with pytest.raises(TypeError, match="`exclude` must be a callable"):
    na.nanoadam(1e-3, exclude=lambda path, leaf, extra: True)


def test_a_gradient_tree_of_another_structure_is_shown_briefly():
  params = {"a": jnp.ones(300), "b": jnp.ones(2)}
  tx = na.nanoadam(1e-3, 0.5)
  state = tx.init(params)
  with pytest.raises(ValueError, match="gradient tree does not match") as info:
    tx.update([jnp.ones(300), jnp.ones(2)], state, params)
  message = str(info.value)
  assert "Array(" not in message and len(message) < 300, message


def test_static_args_make_every_option_static_under_inject_hyperparams():
  params = {"w": jnp.linspace(-1.0, 1.0, 64)}
  tx = optax.inject_hyperparams(na.nanoadam, static_args=na.STATIC_ARGS)(
    learning_rate=1e-2,
    density=0.25,
    density_schedule=lambda t: jnp.float32(0.125) - 0 * t.astype(jnp.float32),
    density_interval=10,
    granularity="block",
    block_size=16,
    mu_dtype=jnp.bfloat16,
    nu_dtype=jnp.bfloat16,
    rounding="nearest",
    nesterov=True,
    exclude=lambda path, leaf: False,
    mask=lambda params: {"w": True},
    moments="reset",
    select="smallest",
    selection="top_k",
  )
  state = tx.init(params)
  with jax.numpy_dtype_promotion("standard"):
    updates, _ = tx.update(params, state, params)
  assert int((updates["w"] != 0).sum()) == 8  # 2 of each block of 16
  # Every other argument of the factory may be injected.
  factory = inspect.signature(na.nanoadam).parameters
  injectable = set(factory) - set(na.STATIC_ARGS)
  assert injectable == set(state.hyperparams)  # all injected, none lost
