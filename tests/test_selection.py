"""Tests for the bottom-k selection backends in `nanoadam_jax._selection`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nanoadam_jax as na
from nanoadam_jax import _selection

EXACT = ("top_k", "radix", "auto")
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _reference(scores, k, k_active=None):
  """NumPy: stable argsort of the scores, padded like `pad_inactive`."""
  values = np.asarray(jnp.asarray(scores, jnp.float32))
  n = values.shape[0]
  k_active = k if k_active is None else int(k_active)
  chosen = np.sort(np.argsort(values, kind="stable")[:k_active])
  pad = n + np.arange(k_active, k)
  return np.concatenate([chosen, pad]).astype(np.int32)


def _data(kind, n, dtype, seed=0):
  """Test tensors; ``kind`` names the hard case they cover."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(n).astype(np.float32)
  if kind == "ties":
    x = rng.integers(-3, 4, n).astype(np.float32)
  elif kind == "zeros":
    x = np.where(rng.random(n) < 0.5, 0.0, -0.0).astype(np.float32)
    x[rng.random(n) < 0.3] = 1.5
  elif kind == "constant":
    x = np.full(n, 0.25, np.float32)
  elif kind == "sorted":
    x = np.sort(np.abs(x))
  elif kind == "periodic":
    # A period that divides the sample stride misleads the sample.
    x = np.tile(rng.standard_normal(63).astype(np.float32), n // 63 + 1)[:n]
  elif kind == "uniform":
    x = rng.random(n).astype(np.float32)
  return jnp.asarray(x, dtype)


def _select(selection, k, **kwargs):
  """A jitted selection with a traced ``k_active``."""

  @jax.jit
  def select(scores, k_active):
    if selection == "radix_small":
      # Tiny sample and buffer: runs the fallback search passes and the
      # tie pass that a default-sized buffer rarely needs.
      return _selection._radix_lowest_k(scores, k, k_active, sample_size=64)
    return _selection.lowest_k_indices(scores, k, k_active, selection)

  return select


KINDS = ("normal", "ties", "zeros", "constant", "sorted", "periodic")


def _check_against_reference(select, dtype, n, k):
  with jax.numpy_dtype_promotion("strict"):
    for kind in KINDS:
      x = _data(kind, n, dtype, seed=n)
      for scores in (jnp.abs(x), -jnp.abs(x)):
        for k_active in sorted({1, max(1, k // 3), k}):
          got = select(scores, jnp.int32(k_active))
          want = _reference(scores, k, k_active)
          np.testing.assert_array_equal(
            got, want, err_msg=f"{n=} {k=} {k_active=} {kind=}"
          )


@pytest.mark.parametrize("selection", ["top_k", "radix", "radix_small"])
@pytest.mark.parametrize(
  ("n", "k"), [(45, 4), (45, 45), (5003, 1), (5003, 500)]
)
def test_exact_backends_match_reference(selection, n, k):
  _check_against_reference(_select(selection, k), jnp.float32, n, k)


@pytest.mark.parametrize("selection", ["top_k", "radix", "radix_small"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_exact_backends_half_precision(selection, dtype):
  _check_against_reference(_select(selection, 500), dtype, 5003, 500)


def test_auto_is_exact():
  x = jnp.abs(_data("ties", 3000, jnp.float32))
  got = _select("auto", 300)(x, jnp.int32(123))
  np.testing.assert_array_equal(got, _reference(x, 300, 123))


@pytest.mark.parametrize("selection", ["radix", "radix_small"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_radix_matches_top_k(selection, dtype):
  n, k = 3000, 700
  x = _data("normal", n, dtype, seed=1)
  x = x.at[::7].set(0).at[::11].set(x[::11] * 1e-3)
  radix, top_k = _select(selection, k), _select("top_k", k)
  with jax.numpy_dtype_promotion("strict"):
    for scores in (jnp.abs(x), -jnp.abs(x), x):
      for k_active in (1, 5, 699, 700):
        a = radix(scores, jnp.int32(k_active))
        b = top_k(scores, jnp.int32(k_active))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("selection", ["radix", "radix_small"])
def test_radix_orders_signed_zeros_and_subnormals_by_value(selection):
  # Raw scores (not |x|) with both zeros and float32 subnormals: the radix
  # backend follows NumPy (-0.0 == +0.0, subnormals by value). XLA:CPU's
  # float comparisons would flush subnormals to zero.
  tiny = np.float32(1e-40)
  base = np.array([tiny, 0.0, 2 * tiny, -0.0, -tiny, 1e-45, 3.0], np.float32)
  x = jnp.asarray(np.tile(base, 300))
  for k in (3, x.shape[0]):
    select = _select(selection, k)
    for k_active in sorted({1, 2, 3, 400, 1000, k} & set(range(1, k + 1))):
      got = select(x, jnp.int32(k_active))
      np.testing.assert_array_equal(got, _reference(x, k, k_active))


def test_radix_orders_bfloat16_subnormals_by_value():
  # XLA:CPU's `top_k` sees these subnormals as zeros and would return [0, 1].
  x = jnp.asarray(np.array([2e-39, 5e-39, 0.0, 1e-39, 3.0]), jnp.bfloat16)
  got = _select("radix", 2)(x, jnp.int32(2))
  np.testing.assert_array_equal(got, [2, 3])  # 0.0, then 1e-39
  np.testing.assert_array_equal(got, _reference(x, 2))


@pytest.mark.parametrize("selection", EXACT + ("approx",))
def test_k_zero(selection):
  select = functools.partial(_selection.lowest_k_indices, selection=selection)
  got = jax.jit(select, static_argnums=1)(jnp.ones(5), 0)
  assert got.shape == (0,)
  assert got.dtype == jnp.int32


@pytest.mark.parametrize("selection", EXACT + ("approx",))
@pytest.mark.parametrize("n", [1, 2])
def test_tiny_tensors(selection, n):
  scores = jnp.array([0.5, -0.5][:n], jnp.float32)
  select_all = functools.partial(
    _selection.lowest_k_indices, selection=selection
  )
  for k in range(1, n + 1):
    got = jax.jit(select_all, static_argnums=1)(scores, k)
    np.testing.assert_array_equal(got, _reference(scores, k))
    got = _select(selection, k)(scores, jnp.int32(1))
    np.testing.assert_array_equal(got, _reference(scores, k, 1))


@pytest.mark.parametrize("selection", EXACT)
def test_k_equals_n_selects_everything(selection):
  x = _data("ties", 1000, jnp.float32)
  got = _select(selection, 1000)(x, jnp.int32(1000))
  np.testing.assert_array_equal(got, np.arange(1000))


@pytest.mark.parametrize("selection", ["radix", "radix_small"])
def test_radix_large_tensor(selection):
  # Large enough for the sampled first pass (the default buffer holds 2**14).
  n = (1 << 18) + 77
  for k, k_active in ((n // 8, 12_345), (n // 100, 3)):
    select = _select(selection, k)
    for kind in ("normal", "uniform", "ties", "constant"):
      scores = jnp.abs(_data(kind, n, jnp.float32, seed=3))
      got = select(scores, jnp.int32(k_active))
      np.testing.assert_array_equal(got, _reference(scores, k, k_active))


def test_radix_compaction():
  rng = np.random.default_rng(4)
  # 40_000 words: three chunks of windows.
  words = rng.integers(0, 2**32, 40_000, dtype=np.uint64)
  words = jnp.asarray(words, jnp.uint32)
  words = words.at[::3].set(0).at[::5].set(0xFFFFFFFF)
  bits = np.unpackbits(
    np.asarray(words).view(np.uint8).reshape(-1, 4), axis=1, bitorder="little"
  ).reshape(-1)
  want = np.flatnonzero(bits).astype(np.int32)
  compact = functools.partial(_selection._compact, size=want.shape[0])
  np.testing.assert_array_equal(jax.jit(compact)(words), want)


def test_jit_compiles_once_and_k_active_is_traced():
  x = _data("normal", 5000, jnp.float32)
  traces = []

  @functools.partial(jax.jit, static_argnums=1)
  def select(scores, k, k_active):
    traces.append(None)
    return _selection.lowest_k_indices(scores, k, k_active, "radix")

  for k_active in (1, 250, 500):
    got = select(jnp.abs(x), 500, jnp.int32(k_active))
    np.testing.assert_array_equal(got, _reference(jnp.abs(x), 500, k_active))
  assert len(traces) == 1


def test_radix_under_vmap():
  x = jnp.abs(_data("normal", 4 * 999, jnp.float32).reshape(4, 999))
  k_active = jnp.array([1, 50, 99, 100], jnp.int32)
  select = functools.partial(_selection.lowest_k_indices, selection="radix")
  got = jax.jit(jax.vmap(lambda s, a: select(s, 100, a)))(x, k_active)
  for row in range(4):
    want = _reference(x[row], 100, k_active[row])
    np.testing.assert_array_equal(got[row], want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["uniform", "ties"])
def test_approx_is_sorted_unique_padded(dtype, kind):
  n, k = 20_000, 2_000
  x = _data(kind, n, dtype, seed=5)
  for k_active in (1, 777, k):
    got = np.asarray(_select("approx", k)(x, jnp.int32(k_active)))
    assert got.shape == (k,) and got.dtype == np.int32
    assert np.all(np.diff(got) > 0)
    real = got[got < n]
    assert real.shape[0] <= k_active
    np.testing.assert_array_equal(
      got[real.shape[0] :] - n, np.arange(real.shape[0], k)
    )


def test_approx_recall_on_random_data():
  # On CPU `approx_min_k` selects values exactly, so distinct scores give a
  # recall of 1; on TPU the default recall target is 0.95.
  n, k = 50_000, 5_000
  x = _data("uniform", n, jnp.float32, seed=6)
  got = np.asarray(_select("approx", k)(x, jnp.int32(k)))
  want = _reference(x, k)
  recall = np.intersect1d(got, want).shape[0] / k
  assert recall >= 0.9
  if jax.default_backend() == "cpu":
    assert recall == 1.0


def test_approx_survives_duplicate_indices(monkeypatch):
  # Some platforms return repeated indices; the output must stay unique.
  def fake_approx_min_k(scores, k):
    order = jnp.array([3, 3, 1, 9, 1, -1, 2, 2][:k], jnp.int32)
    return scores[jnp.clip(order, 0)], order

  monkeypatch.setattr(_selection.lax, "approx_min_k", fake_approx_min_k)
  got = _selection.lowest_k_indices(
    jnp.arange(8.0), 8, jnp.int32(7), selection="approx"
  )
  np.testing.assert_array_equal(got, [1, 2, 3, 11, 12, 13, 14, 15])


def test_resolve_selection():
  assert _selection.resolve_selection("top_k") == "top_k"
  assert _selection.resolve_selection("approx", "tpu") == "approx"
  for platform in ("cpu", "gpu", "tpu", "something-new"):
    resolved = _selection.resolve_selection("auto", platform)
    assert resolved in _selection.SELECTION_BACKENDS
    assert resolved not in ("auto", "approx")
  assert _selection.resolve_selection("auto", "cpu") == "radix"
  assert _selection.resolve_selection("auto") == _selection.resolve_selection(
    "auto", jax.default_backend()
  )


@pytest.mark.parametrize(
  ("args", "message"),
  [
    ((jnp.ones(4), 2, None, "sort"), "selection"),
    ((jnp.ones((2, 2)), 2, None, "radix"), "1-D"),
    ((jnp.arange(4), 2, None, "radix"), "floating"),
    ((jnp.ones(4), 5, None, "radix"), "`k`"),
    ((jnp.ones(4), -1, None, "top_k"), "`k`"),
  ],
)
def test_bad_input(args, message):
  with pytest.raises(ValueError, match=message):
    _selection.lowest_k_indices(*args)


def test_nan_scores_do_not_crash():
  x = _data("normal", 3000, jnp.float32).at[::5].set(jnp.nan)
  for selection in ("radix", "approx"):
    got = np.asarray(_select(selection, 300)(x, jnp.int32(300)))
    assert got.shape == (300,)
    assert np.all(np.diff(got) > 0)


def test_public_default_is_the_optimizers_auto(monkeypatch):
  """na.lowest_k_indices defaults to "auto", as the optimizer does."""
  seen = []
  resolve = _selection.resolve_selection
  monkeypatch.setattr(
    _selection,
    "resolve_selection",
    lambda selection: seen.append(selection) or resolve(selection),
  )
  got = na.lowest_k_indices(jnp.array([3.0, 1.0, 2.0, 1.0]), 2)
  np.testing.assert_array_equal(got, [1, 3])
  assert seen == ["auto"]


@pytest.mark.parametrize("k_active", [0, -1, 4, jnp.int32(5)])
def test_concrete_k_active_outside_one_to_k_raises(k_active):
  with pytest.raises(ValueError, match="k_active"):
    na.lowest_k_indices(jnp.arange(6.0), 3, k_active)
  with pytest.raises(ValueError, match="k_active"):
    na.lowest_k_indices(jnp.arange(6.0), 3, 1.5)


@pytest.mark.parametrize("selection", ["top_k", "radix", "approx"])
def test_traced_k_active_is_clipped_so_backends_agree(selection):
  scores = jnp.asarray([5.0, 0.5, 4.0, 1.0, 3.0, 2.0])
  select = jax.jit(
    lambda k_active: na.lowest_k_indices(scores, 3, k_active, selection)
  )
  np.testing.assert_array_equal(select(jnp.int32(9)), [1, 3, 5])  # as 3
  np.testing.assert_array_equal(select(jnp.int32(0)), [1, 7, 8])  # as 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_radix_under_enable_x64(dtype):
  """With jax_enable_x64, jnp.sum of int32 is int64 unless told otherwise;
  the radix search's loop carry must keep its int32 counts."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    x = _data("normal", 5000, dtype, seed=7)
    for k_active in (None, jnp.int32(200)):
      got = _selection.lowest_k_indices(x, 500, k_active, "radix")
      want = _selection.lowest_k_indices(x, 500, k_active, "top_k")
      assert got.dtype == jnp.int32
      np.testing.assert_array_equal(got, want)
  finally:
    jax.config.update("jax_enable_x64", previous)


def _edge_rows(dtype, n, seed):
  """NaN-free rows of raw bit patterns: ties, both zeros, subnormals, infs."""
  rng = np.random.default_rng(seed)
  uint = np.uint32 if jnp.dtype(dtype).itemsize == 4 else np.uint16
  width = 8 * np.dtype(uint).itemsize
  bits = rng.integers(0, 2**width, size=n, dtype=np.uint64).astype(uint)
  sign = 1 << (width - 1)
  specials = np.array([0, sign, 1, 2, sign | 1, sign | 3], uint)  # 0s, subn.
  bits = np.where(rng.random(n) < 0.15, rng.choice(specials, n), bits)
  bits = np.where(rng.random(n) < 0.4, rng.choice(bits[: n // 7 + 1], n), bits)
  values = jnp.asarray(bits).view(dtype)
  nan = np.isnan(np.asarray(values.astype(jnp.float32)))
  return jnp.where(jnp.asarray(nan), jnp.asarray(np.inf, dtype), values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 37, 4096])
def test_small_row_path_equals_radix_passes(dtype, n):
  # Rows up to _SORT_MAX_N entries take `_small_row_lowest_k`; it must give
  # the radix passes' indices bit for bit (and the stable key sort's).
  small = jax.jit(_selection._small_row_lowest_k, static_argnums=1)
  radix = jax.jit(_selection._radix_lowest_k, static_argnums=1)
  keys = jax.jit(_selection._sorted_keys_lowest_k, static_argnums=1)
  middle = n // 3 + 1
  for seed in range(2):
    x = _edge_rows(dtype, n, seed)
    for k in sorted({1, middle, n}):
      for k_active in sorted({1, k // 2 + 1, k}):
        active = jnp.int32(k_active)
        got = small(x, k, active)
        np.testing.assert_array_equal(got, radix(x, k, active))
        np.testing.assert_array_equal(got, keys(x, k, active))
    # Without an active count: one k (each k is two more programs to
    # compile, the suite's slowest selection test).
    np.testing.assert_array_equal(
      small(x, middle, None), radix(x, middle, None)
    )
    assert _selection.lowest_k_indices(x, 0).shape == (0,)


def test_small_rows_under_vmap_take_the_small_row_path():
  x = jnp.abs(_data("ties", 8 * 4096, jnp.float32).reshape(8, 4096))
  k_active = jnp.arange(1, 9, dtype=jnp.int32) * 50
  select = functools.partial(_selection.lowest_k_indices, selection="radix")
  got = jax.jit(jax.vmap(lambda s, a: select(s, 410, a)))(x, k_active)
  for row in range(8):
    want = _reference(x[row], 410, k_active[row])
    np.testing.assert_array_equal(got[row], want)
