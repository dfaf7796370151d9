"""NanoAdam's arithmetic against independent references."""

import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nanoadam_jax as na
from tests import numpy_reference
from tests.conftest import optax_reference
from tests.conftest import random_grads
from tests.conftest import strict_schedule

# Short runs with schedules that would leave (0, density] later, and
# schedules outside it on purpose (the clamping is part of the contract).
pytestmark = pytest.mark.filterwarnings(
  "ignore:`density_schedule` leaves:UserWarning"
)


def run_jax(tx, params, grads):
  """Applies ``tx`` for ``len(grads)`` steps; returns params and updates."""
  state = tx.init(params)
  step = jax.jit(tx.update)
  history = []
  for grad in grads:
    updates, state = step(grad, state, params)
    params = optax.apply_updates(params, updates)
    history.append(updates)
  return params, history, state


# As in optax.scale_by_adam, the bias correction 1 - b2**c is computed in
# float32, where 1 - float32(0.999) is 1.3e-5 off; a first step is then
# 6.6e-6 (relative) off its exact value.
BIAS_RTOL = 1e-5


def assert_matches_reference(ours, our_updates, expected, expected_updates):
  """Same selected entries every step, values to float32 rounding."""
  for step, (mine, reference) in enumerate(
    zip(our_updates, expected_updates, strict=True)
  ):
    for leaf in reference:
      np.testing.assert_array_equal(
        np.asarray(mine[leaf]) != 0,
        reference[leaf] != 0,
        err_msg=f"selected entries differ at step {step} in {leaf}",
      )
      np.testing.assert_allclose(
        mine[leaf], reference[leaf], rtol=2e-5, atol=1e-7
      )
  # Params accumulate float32 rounding over the steps (ulp ~2e-7 near 1).
  for leaf in expected:
    np.testing.assert_allclose(ours[leaf], expected[leaf], rtol=1e-5, atol=1e-5)


def as_numpy(tree):
  return {name: np.asarray(leaf) for name, leaf in tree.items()}


@pytest.mark.parametrize("mask_interval", [1, 7, 1000])
def test_full_density_equals_adamw(tree_params, mask_interval):
  schedule = strict_schedule(
    optax.cosine_decay_schedule(3e-2, decay_steps=60, alpha=0.1)
  )
  grads = random_grads(tree_params, 60)
  ours, our_updates, _ = run_jax(
    na.nanoadam(
      schedule, density=1.0, mask_interval=mask_interval, weight_decay=0.1
    ),
    tree_params,
    grads,
  )
  with optax_reference():
    theirs, their_updates, _ = run_jax(
      optax.adamw(schedule, weight_decay=0.1), tree_params, grads
    )
  for mine, reference in zip(our_updates, their_updates, strict=True):
    for name in tree_params:
      np.testing.assert_allclose(
        mine[name], reference[name], rtol=1e-5, atol=1e-7
      )
  for name in tree_params:
    np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-7)


REFERENCE_CONFIGS = {
  "remap": dict(density=0.2, mask_interval=5),
  "reset": dict(density=0.2, mask_interval=5, moments="reset"),
  "weight_decay": dict(density=0.3, mask_interval=4, weight_decay=0.5),
  "largest": dict(density=0.1, mask_interval=3, select="largest"),
  "eps_root": dict(density=0.25, mask_interval=6, eps_root=1e-4, b1=0.5),
  "schedule_remap": dict(
    density=0.3,
    mask_interval=9,
    density_schedule=lambda t: 0.3 - 0.01 * t,
    density_interval=4,
  ),
  "schedule_reset": dict(
    density=0.2,
    mask_interval=6,
    density_schedule=lambda t: 0.05 + 0.01 * t,
    density_interval=5,
    moments="reset",
  ),
  "excluded": dict(density=0.2, mask_interval=5, exclude=("dense/bias",)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_matches_float64_reference(tree_params, name):
  config = dict(REFERENCE_CONFIGS[name])
  excluded = config.pop("exclude", ())
  learning_rate = 0.05
  grads = random_grads(tree_params, 25, seed=3)
  jax_config = dict(config)
  if config.get("density_schedule") is not None:
    jax_config["density_schedule"] = strict_schedule(config["density_schedule"])
  if excluded:
    jax_config["exclude"] = "|".join(f"^{path}$" for path in excluded)
  ours, our_updates, _ = run_jax(
    na.nanoadam(learning_rate, **jax_config), tree_params, grads
  )
  expected, expected_updates = numpy_reference.run(
    as_numpy(tree_params),
    [as_numpy(g) for g in grads],
    lambda t: learning_rate,
    excluded=excluded,
    **config,
  )
  assert_matches_reference(ours, our_updates, expected, expected_updates)


def test_reference_configs_exercise_what_they_claim(tree_params):
  # Guards the test above against vacuous configs: a schedule that changes
  # the active count, and re-selections that change the selected set.
  grads = random_grads(tree_params, 25, seed=3)
  config = dict(REFERENCE_CONFIGS["schedule_reset"])
  _, updates = numpy_reference.run(
    as_numpy(tree_params),
    [as_numpy(g) for g in grads],
    lambda t: 0.05,
    **config,
  )
  counts = {int(np.sum(u["conv"] != 0)) for u in updates}
  assert len(counts) >= 3, counts
  _, updates = numpy_reference.run(
    as_numpy(tree_params),
    [as_numpy(g) for g in grads],
    lambda t: 0.05,
    **REFERENCE_CONFIGS["remap"],
  )
  supports = {tuple(np.flatnonzero(u["conv"])) for u in updates}
  assert len(supports) >= 2


def test_never_selected_entries_are_bit_identical():
  rng = np.random.default_rng(5)
  # Small entries in the first half, large ones in the second: the large half
  # can never enter a 10% selection within 30 small steps.
  values = np.concatenate(
    [rng.uniform(-0.01, 0.01, 500), rng.uniform(5.0, 6.0, 500)]
  )
  params = {"w": jnp.asarray(values, jnp.float32)}
  tx = na.nanoadam(1e-3, density=0.1, mask_interval=3)
  final, history, _ = run_jax(tx, params, random_grads(params, 30))
  moved = np.flatnonzero(np.asarray(final["w"]) != values.astype(np.float32))
  assert moved.size > 0
  assert moved.max() < 500
  np.testing.assert_array_equal(
    np.asarray(final["w"])[500:].view(np.uint32),
    values[500:].astype(np.float32).view(np.uint32),
  )
  for updates in history:
    assert int(jnp.sum(updates["w"] != 0)) <= 100


def test_at_most_k_t_nonzero_under_a_schedule(tree_params):
  schedule = strict_schedule(
    optax.linear_schedule(0.3, 0.05, transition_steps=20)
  )
  tx = na.nanoadam(
    0.1,
    density=0.3,
    mask_interval=50,
    density_schedule=schedule,
    density_interval=5,
  )
  _, history, _ = run_jax(tx, tree_params, random_grads(tree_params, 25))
  for t, updates in enumerate(history):
    fraction = float(schedule(t - t % 5))
    for name, leaf in tree_params.items():
      n = leaf.size
      k = max(1, int(np.ceil(0.3 * n - 1e-9)))
      k_t = int(np.clip(numpy_reference.count_of(fraction, n), 1, k))
      assert int(jnp.sum(updates[name] != 0)) <= k_t, (t, name)


def test_ties_go_to_the_lower_flat_index():
  # Hand-checked: |w| = [1, .5, .5, 3, .5, .5]; k = 3 picks indices 1, 2, 4.
  params = {"w": jnp.array([[1.0, 0.5, -0.5], [3.0, 0.5, -0.5]])}
  tx = na.scale_by_nanoadam(density=0.5)
  updates, _ = tx.update({"w": jnp.ones((2, 3))}, tx.init(params), params)
  np.testing.assert_array_equal(
    np.flatnonzero(np.asarray(updates["w"])), [1, 2, 4]
  )
  # Adam's first step has magnitude 1 (bias-corrected), sign of the gradient.
  np.testing.assert_allclose(
    np.asarray(updates["w"]).reshape(-1)[[1, 2, 4]], 1.0, rtol=BIAS_RTOL
  )


def test_fixed_selection_equals_adamw_on_the_subset():
  rng = np.random.default_rng(7)
  values = rng.normal(size=200).astype(np.float32)
  params = {"w": jnp.asarray(values)}
  steps = 40
  grads = random_grads(params, steps, seed=11)
  tx = na.nanoadam(1e-3, density=0.1, mask_interval=10_000, weight_decay=0.2)
  final, _, _ = run_jax(tx, params, grads)

  subset = np.sort(np.argsort(np.abs(values), kind="stable")[:20])
  sub_params = jnp.asarray(values[subset])
  adamw = optax.adamw(1e-3, weight_decay=0.2)
  sub_state = adamw.init(sub_params)
  with optax_reference():
    for grad in grads:
      sub_grad = grad["w"][subset]
      sub_updates, sub_state = adamw.update(sub_grad, sub_state, sub_params)
      sub_params = optax.apply_updates(sub_params, sub_updates)

  expected = values.copy()
  expected[subset] = np.asarray(sub_params)
  np.testing.assert_allclose(final["w"], expected, rtol=1e-6, atol=1e-7)


def adam_by_hand(grads, count, b1=0.9, b2=0.999, eps=1e-8):
  """Adam's direction after ``grads`` with bias-correction count ``count``."""
  mu = nu = 0.0
  for g in grads:
    mu, nu = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g * g
  return (mu / (1 - b1**count)) / (np.sqrt(nu / (1 - b2**count)) + eps)


@pytest.mark.parametrize("moments", ["remap", "reset"])
def test_reselection_carries_or_resets_moments(moments):
  # Steps 0 and 1 select entries {0, 1}; before step 2 the params change so
  # that step 2 selects {0, 2}: entry 0 stays, entry 2 is new.
  tx = na.scale_by_nanoadam(density=0.5, mask_interval=2, moments=moments)
  params = {"w": jnp.array([0.0, 1.0, 2.0, 50.0])}
  state = tx.init(params)
  for grad in ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]):
    _, state = tx.update({"w": jnp.array(grad)}, state, params)
  params = {"w": jnp.array([0.0, 5.0, 0.5, 50.0])}
  updates, _ = tx.update({"w": jnp.array([-1.0, 3.0, 2.0, 1.0])}, state, params)
  got = np.asarray(updates["w"])
  if moments == "remap":
    expected = [adam_by_hand([1, 1, -1], 3), 0.0, adam_by_hand([2], 3), 0.0]
  else:
    expected = [adam_by_hand([-1], 1), 0.0, adam_by_hand([2], 1), 0.0]
  np.testing.assert_allclose(got, expected, rtol=BIAS_RTOL)


def test_random_selection_is_seeded_and_differs_from_smallest():
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=300))}
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  grad = {"w": jnp.ones(300, jnp.float32)}

  def support(**kwargs):
    tx = na.scale_by_nanoadam(density=0.1, **kwargs)
    updates, _ = tx.update(grad, tx.init(params), params)
    return tuple(np.flatnonzero(np.asarray(updates["w"])))

  assert len(support(select="random", seed=1)) == 30
  assert support(select="random", seed=1) == support(select="random", seed=1)
  assert support(select="random", seed=1) != support(select="random", seed=2)
  assert support(select="random", seed=1) != support(select="smallest")


def test_empty_and_scalar_leaves():
  params = {"empty": jnp.zeros((0, 3)), "scalar": jnp.array(2.0)}
  tx = na.nanoadam(0.1, density=0.01)
  state = tx.init(params)
  grads = {"empty": jnp.zeros((0, 3)), "scalar": jnp.array(1.0)}
  updates, _ = tx.update(grads, state, params)
  assert updates["empty"].shape == (0, 3)
  # A scalar has one entry, so k = 1 and it is always selected.
  assert float(updates["scalar"]) == pytest.approx(-0.1, rel=BIAS_RTOL)


BLOCK_CONFIGS = {
  "remap": dict(density=0.2, mask_interval=4, block_size=8),
  "odd_blocks": dict(density=0.3, mask_interval=3, block_size=7),
  "reset_decay": dict(
    density=0.25,
    mask_interval=5,
    block_size=16,
    moments="reset",
    weight_decay=0.3,
  ),
  "schedule": dict(
    density=0.4,
    mask_interval=7,
    block_size=10,
    density_schedule=lambda t: 0.4 - 0.02 * t,
    density_interval=3,
  ),
}


@pytest.mark.parametrize("name", sorted(BLOCK_CONFIGS))
def test_block_granularity_matches_float64_reference(tree_params, name):
  config = dict(BLOCK_CONFIGS[name])
  grads = random_grads(tree_params, 20, seed=4)
  jax_config = dict(config, granularity="block")
  if config.get("density_schedule") is not None:
    jax_config["density_schedule"] = strict_schedule(config["density_schedule"])
  ours, our_updates, state = run_jax(
    na.nanoadam(0.05, **jax_config), tree_params, grads
  )
  expected, expected_updates = numpy_reference.run(
    as_numpy(tree_params),
    [as_numpy(g) for g in grads],
    lambda t: 0.05,
    **config,
  )
  assert_matches_reference(ours, our_updates, expected, expected_updates)
  # conv has 60 entries: ceil(60 / block) blocks of local int16 indices.
  block = config["block_size"]
  conv_indices = state[0].indices["conv"]
  assert conv_indices.dtype == jnp.int16
  assert conv_indices.shape[0] == -(-60 // block)


def test_one_block_per_tensor_equals_tensor_granularity(tree_params):
  grads = random_grads(tree_params, 12, seed=8)
  tensor, tensor_updates, _ = run_jax(
    na.nanoadam(0.05, density=0.2, mask_interval=3), tree_params, grads
  )
  block, block_updates, _ = run_jax(
    na.nanoadam(
      0.05,
      density=0.2,
      mask_interval=3,
      granularity="block",
      block_size=10_000,
    ),
    tree_params,
    grads,
  )
  for ours, theirs in zip(block_updates, tensor_updates, strict=True):
    for name in tree_params:
      np.testing.assert_array_equal(
        np.asarray(ours[name]) != 0, np.asarray(theirs[name]) != 0
      )
  # The same selections; the values differ by float32 rounding only (XLA
  # fuses the vmapped block step differently).
  chex.assert_trees_all_close(block, tensor, rtol=1e-6, atol=1e-7)


def test_block_indices_widen_to_int32_for_large_blocks():
  params = {"w": jax.ShapeDtypeStruct((70_000,), jnp.float32)}
  small = na.scale_by_nanoadam(granularity="block", block_size=32_768)
  large = na.scale_by_nanoadam(granularity="block", block_size=32_769)
  small_state = jax.eval_shape(small.init, params)
  large_state = jax.eval_shape(large.init, params)
  assert small_state.indices["w"].dtype == jnp.int16
  assert small_state.indices["w"].shape == (3, 3277)
  assert large_state.indices["w"].dtype == jnp.int32
  assert large_state.indices["w"].shape == (3, 3277)


def test_tensors_beyond_int32_need_blocks():
  huge = {"w": jax.ShapeDtypeStruct((2**31 + 64,), jnp.bfloat16)}
  with pytest.raises(ValueError, match="'w'.*granularity='block'"):
    jax.eval_shape(na.nanoadam(1e-3, density=0.01).init, huge)
  tx = na.nanoadam(1e-3, density=0.01, granularity="block", block_size=4096)
  state = jax.eval_shape(tx.init, huge)
  assert state[0].indices["w"].shape == (524_289, 41)
  # The whole update traces and lowers (nothing is allocated).
  lowered = jax.jit(tx.update).lower(huge, state, huge)
  assert "scatter" in lowered.as_text()


@pytest.mark.parametrize("granularity", ["tensor", "block"])
def test_empty_leaf_in_either_granularity(granularity):
  params = {"empty": jnp.zeros((0, 4)), "w": jnp.arange(1.0, 9.0)}
  block_size = 4 if granularity == "block" else None
  tx = na.nanoadam(
    0.1, density=0.25, granularity=granularity, block_size=block_size
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert updates["empty"].shape == (0, 4)
  # Per tensor: the 2 smallest of 8; per block of 4: the smallest of each.
  expected = [0, 1] if granularity == "tensor" else [0, 4]
  np.testing.assert_array_equal(np.flatnonzero(updates["w"]), expected)


@pytest.mark.parametrize("granularity", ["tensor", "block"])
def test_results_do_not_depend_on_the_selection_backend(granularity):
  rng = np.random.default_rng(12)
  params = {
    # Ties (rounded values), exact zeros and both signs.
    "w": jnp.asarray(np.round(rng.normal(size=(37, 11)), 1), jnp.float32),
    "b": jnp.zeros(9, jnp.float32),
    "h": jnp.asarray(rng.normal(size=300), jnp.bfloat16),
  }
  grads = random_grads(params, 9, seed=13)
  grads = [
    jax.tree.map(lambda g, p: g.astype(p.dtype), g, params) for g in grads
  ]
  schedule = lambda t: 0.2 - 0.01 * t.astype(jnp.float32)  # noqa: E731
  results = {}
  for backend in ("top_k", "radix", "auto"):
    tx = na.nanoadam(
      0.05,
      density=0.2,
      mask_interval=2,
      density_schedule=schedule,
      density_interval=3,
      selection=backend,
      granularity=granularity,
      block_size=64 if granularity == "block" else None,
    )
    results[backend] = run_jax(tx, params, grads)[0]
  for backend in ("radix", "auto"):
    for name in params:
      np.testing.assert_array_equal(
        np.asarray(results[backend][name], np.float32),
        np.asarray(results["top_k"][name], np.float32),
        err_msg=f"{backend} differs from top_k on {name}",
      )


@pytest.mark.parametrize(
  "learning_rate",
  [0.03, optax.linear_schedule(0.05, 0.01, 10)],
  ids=["constant", "schedule"],
)
def test_nanoadam_equals_the_chain_it_fuses(tree_params, learning_rate):
  params = tree_params
  grads = random_grads(params, 12, seed=6)
  kwargs = dict(density=0.2, mask_interval=4, weight_decay=0.1, exclude="scale")
  fused = na.nanoadam(learning_rate, **kwargs)
  chained = optax.chain(
    na.scale_by_nanoadam(**kwargs), optax.scale_by_learning_rate(learning_rate)
  )
  # Optax's schedules mix int32 and float; the chain needs standard rules.
  with optax_reference():
    ours, our_updates, our_state = run_jax(fused, params, grads)
    theirs, their_updates, their_state = run_jax(chained, params, grads)
  assert jax.tree.structure(our_state) == jax.tree.structure(their_state)
  chex.assert_trees_all_equal(our_state, their_state)
  chex.assert_trees_all_equal(our_updates, their_updates)
  chex.assert_trees_all_equal(ours, theirs)


def test_nanoadam_rounds_a_16bit_update_once(tree_params):
  """On bfloat16 params the chain rounds twice (its direction to bfloat16,
  then the scaled product), the fused alias once, from float32: the same
  entries move, by amounts within one bfloat16 rounding of each other."""
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), tree_params)
  grads = jax.tree.map(
    lambda g: g.astype(jnp.bfloat16), random_grads(params, 1, seed=6)[0]
  )
  kwargs = dict(density=0.2, mask_interval=4, weight_decay=0.1, exclude="scale")
  fused = na.nanoadam(0.03, **kwargs)
  chained = optax.chain(
    na.scale_by_nanoadam(**kwargs), optax.scale_by_learning_rate(0.03)
  )
  with optax_reference():
    ours, _ = fused.update(grads, fused.init(params), params)
    theirs, _ = chained.update(grads, chained.init(params), params)
  for mine, reference in zip(
    jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True
  ):
    assert mine.dtype == jnp.bfloat16
    np.testing.assert_array_equal(mine != 0, reference != 0)
    np.testing.assert_allclose(
      np.asarray(mine, np.float32),
      np.asarray(reference, np.float32),
      rtol=2**-7,
    )


def updated_count(tx, n):
  params = {"w": jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32)}
  grads = {"w": jnp.ones(n, jnp.float32)}
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return int(jnp.sum(updates["w"] != 0))


@pytest.mark.parametrize(
  ("fraction", "n", "expected"),
  [
    (0.5, 1_000_001, 500_001),  # ceil(500000.5): a half entry is an entry
    (0.05, 100, 5),  # float32(0.05) * 100 = 5.0000001 is rounding, not 6
    (0.07, 100, 7),
    (0.013, 1000, 13),
    (0.0, 50, 1),  # at least one entry
    (float("nan"), 50, 1),  # NaN counts as 0
    (0.9, 50, 25),  # clipped to density 0.5
  ],
)
def test_schedule_entry_counts(fraction, n, expected):
  tx = na.scale_by_nanoadam(
    density=0.5,
    mask_interval=10,
    density_schedule=lambda t: jnp.asarray(fraction, jnp.float32),
    density_interval=10,
  )
  assert updated_count(tx, n) == expected


def test_approx_selection_steps_within_bounds():
  tx = na.scale_by_nanoadam(density=0.1, selection="approx")
  # On CPU approx_min_k is exact on distinct values.
  assert updated_count(tx, 1000) == 100


def test_absent_state_is_masked_not_zero_size():
  params = {"w": jnp.ones((4, 4)), "head": jnp.zeros((0, 3))}
  tx = na.scale_by_nanoadam(density=0.25, exclude="head")
  state = tx.init(params)
  assert all(leaf.size > 0 for leaf in jax.tree.leaves(state))
  assert isinstance(state.mu["head"], optax.MaskedNode)
  assert isinstance(state.indices["w"], jax.Array)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_numpy_params_and_gradients_work_outside_jit(weight_decay):
  """Optax accepts NumPy arrays as params and gradients; so must we."""
  params = {"w": np.linspace(-1, 1, 10, dtype=np.float32)}
  grads = {"w": np.linspace(1, 2, 10, dtype=np.float32)}
  tx = na.nanoadam(1e-2, 0.2, weight_decay=weight_decay)
  updates, state = tx.update(grads, tx.init(params), params)
  as_jax = lambda tree: jax.tree.map(jnp.asarray, tree)
  expected, expected_state = tx.update(
    as_jax(grads), tx.init(as_jax(params)), as_jax(params)
  )
  assert isinstance(updates["w"], jax.Array)
  np.testing.assert_array_equal(updates["w"], expected["w"])
  chex.assert_trees_all_equal(state, expected_state)
  assert int((updates["w"] != 0).sum()) == 2


def test_python_float_leaves_are_float_scalars():
  """A Python float leaf is a 0-d array of the default float dtype, as in
  optax.adamw (which accepts it)."""
  params = {"c": 1.5, "w": jnp.linspace(-1.0, 1.0, 4)}
  grads = {"c": 0.5, "w": jnp.ones(4)}
  tx = na.nanoadam(1e-2, 1.0)
  state = tx.init(params)
  # A sparse scalar keeps a (1,) buffer, in the default float dtype.
  assert state[0].mu["c"].dtype == jnp.float32
  updates, _ = tx.update(grads, state, params)
  reference = optax.adamw(1e-2, weight_decay=0.0)
  with optax_reference():
    expected, _ = reference.update(grads, reference.init(params), params)
  assert updates["c"].dtype == jnp.float32 and updates["c"].shape == ()
  np.testing.assert_allclose(updates["c"], expected["c"], rtol=1e-6)
  np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_unselected_negative_zeros_keep_their_sign(fused):
  """Frozen bit for bit holds for -0.0 too: an unselected -0.0 weight is not
  turned into +0.0 by optax.apply_updates, nor is an excluded integer leaf or
  +0.0 changed. ``fused=False`` is the documented chain of
  scale_by_nanoadam and optax.scale_by_learning_rate."""
  # Ties go to the lower index: the +0.0 entries are selected, the -0.0 not.
  w = np.array([0.0] * 3 + [-0.0] * 6 + [-0.5, 0.25, 2.0], np.float32)
  params = {"w": jnp.asarray(w), "step": jnp.asarray(3, jnp.int32)}
  options = dict(density=0.25, mask_interval=100, exclude="step")
  if fused:
    tx = na.nanoadam(0.1, **options)
  else:
    tx = optax.chain(
      na.scale_by_nanoadam(**options), optax.scale_by_learning_rate(0.1)
    )
  state = tx.init(params)
  grads = {"w": jnp.linspace(-1.0, 1.0, 12), "step": jnp.asarray(0, jnp.int32)}
  moved = np.zeros(12, bool)
  for _ in range(4):
    mask = na.selection_mask(state, params)
    with jax.numpy_dtype_promotion("standard"):  # the int leaf times lr
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    moved |= np.asarray(na.selection_mask(state, params)["w"])
    moved |= np.asarray(mask["w"])
  assert 0 < moved.sum() < 12 and np.signbit(w[~moved]).sum() >= 3
  np.testing.assert_array_equal(
    np.asarray(params["w"])[~moved].view(np.uint32), w[~moved].view(np.uint32)
  )
  assert int(params["step"]) == 3


@pytest.mark.parametrize("factory", [na.nanoadam, na.scale_by_nanoadam])
def test_string_options_are_literal_types(factory):
  """Type checkers and IDEs see the accepted strings of each option."""
  hints = typing.get_type_hints(factory)
  for name, accepted in (
    ("moments", na.MOMENTS),
    ("select", na.SELECT_RULES),
    ("selection", na.SELECTION_BACKENDS),
    ("granularity", na.GRANULARITIES),
  ):
    assert typing.get_origin(hints[name]) is typing.Literal, name
    assert typing.get_args(hints[name]) == accepted, name


def test_defaults_at_density_one_equal_adamw_without_decay(tree_params):
  """What the docstring promises: nanoadam(lr, 1.0) is optax.adamw(lr,
  weight_decay=0.0); Optax's default decay (1e-4) is not ours (0)."""
  grads = random_grads(tree_params, 3)
  _, ours, _ = run_jax(na.nanoadam(1e-2, 1.0), tree_params, grads)
  with optax_reference():
    _, same, _ = run_jax(
      optax.adamw(1e-2, weight_decay=0.0), tree_params, grads
    )
    _, decayed, _ = run_jax(optax.adamw(1e-2), tree_params, grads)
  chex.assert_trees_all_close(ours, same, rtol=1e-5, atol=1e-8)
  assert not np.allclose(ours[-1]["conv"], decayed[-1]["conv"], 1e-7, 0)


@pytest.mark.parametrize("exclude", [None, "dense/bias|scale"])
def test_weight_decay_schedule_equals_adamw(tree_params, exclude):
  """A weight-decay schedule, as optax.adamw takes one: read at the step
  count, on sparse and dense (excluded) leaves alike."""
  decay = strict_schedule(optax.linear_schedule(0.5, 0.0, 4))
  grads = random_grads(tree_params, 5)
  tx = na.nanoadam(1e-2, 1.0, 2, weight_decay=decay, exclude=exclude)
  _, ours, _ = run_jax(tx, tree_params, grads)
  with optax_reference():
    _, expected, _ = run_jax(
      optax.adamw(1e-2, weight_decay=decay), tree_params, grads
    )
    _, constant, _ = run_jax(
      optax.adamw(1e-2, weight_decay=0.5), tree_params, grads
    )
  chex.assert_trees_all_close(ours, expected, rtol=2e-5, atol=1e-7)
  assert not np.allclose(ours[-1]["conv"], constant[-1]["conv"])


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("mask_form", ["tree", "callable"])
@pytest.mark.parametrize("exclude", [None, "scale|conv"])
def test_mask_and_nesterov_equal_adamw(
  tree_params, nesterov, mask_form, exclude
):
  """optax.adamw's `mask` (which leaves decay) and `nesterov`, at density 1,
  on sparse and excluded (dense) leaves alike."""
  decay_matrices = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  mask = decay_matrices
  if mask_form == "tree":
    mask = decay_matrices(tree_params)
  grads = random_grads(tree_params, 4)
  options = dict(weight_decay=0.5, mask=mask, nesterov=nesterov)
  tx = na.nanoadam(1e-2, 1.0, 3, exclude=exclude, **options)
  _, ours, _ = run_jax(tx, tree_params, grads)
  with optax_reference():
    _, expected, _ = run_jax(optax.adamw(1e-2, **options), tree_params, grads)
    _, unmasked, _ = run_jax(
      optax.adamw(1e-2, weight_decay=0.5, nesterov=nesterov), tree_params, grads
    )
  chex.assert_trees_all_close(ours, expected, rtol=2e-5, atol=1e-7)
  # The mask matters: undecayed vectors differ from decaying them.
  assert not np.allclose(ours[-1]["dense/bias"], unmasked[-1]["dense/bias"])


def test_nesterov_differs_from_plain_adam_on_the_selection(tree_params):
  grads = random_grads(tree_params, 3)
  _, plain, _ = run_jax(na.nanoadam(1e-2, 0.5), tree_params, grads)
  _, nesterov, _ = run_jax(
    na.nanoadam(1e-2, 0.5, nesterov=True), tree_params, grads
  )
  for step in (1, 2):
    selected = np.asarray(plain[step]["conv"]) != 0
    np.testing.assert_array_equal(
      selected, np.asarray(nesterov[step]["conv"]) != 0
    )
    assert not np.allclose(plain[step]["conv"], nesterov[step]["conv"])
  with pytest.raises(TypeError, match="nesterov"):
    na.nanoadam(1e-2, nesterov=1)


@pytest.mark.parametrize(
  "exclude",
  [
    "dense/bias|scale",
    {"dense/kernel": False, "dense/bias": True, "scale": True, "conv": False},
    lambda params: {name: name in ("dense/bias", "scale") for name in params},
    lambda path, leaf: path in ("dense/bias", "scale"),
  ],
  ids=["regex", "tree", "params-callable", "path-leaf-callable"],
)
def test_exclude_forms_route_the_same_leaves(tree_params, exclude):
  """Every form of exclude that Optax's masks take trains the same leaves
  densely: their mu has the param's shape, the others a buffer."""
  state = na.nanoadam(1e-2, 0.5, exclude=exclude).init(tree_params)
  dense = {
    name
    for name, mu in state[0].mu.items()
    if mu.shape == tree_params[name].shape and mu.size > 1
  }
  assert dense == {"dense/bias"}  # "scale" is a scalar: (1,) either way
  assert isinstance(state[0].indices["scale"], optax.MaskedNode)
  assert isinstance(state[0].indices["dense/bias"], optax.MaskedNode)
  assert not isinstance(state[0].indices["conv"], optax.MaskedNode)


def test_exclude_regex_matching_nothing_warns_at_init(tree_params):
  """A typo ("haed") would silently train the head sparsely."""
  tx = na.nanoadam(1e-2, exclude="haed")
  with pytest.warns(UserWarning, match="'haed' matches no parameter path"):
    tx.init(tree_params)
