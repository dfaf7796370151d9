"""NanoAdam: Adam on the smallest-magnitude entries of each tensor.

Implementation of "Pay Attention to Small Weights" (Zhou, Jacobs, Gadhikar,
Burkholz; NeurIPS 2025, https://arxiv.org/abs/2506.21374) as an Optax gradient
transformation with fixed-size sparse state.
"""

import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nanoadam_jax import _selection
from nanoadam_jax import _tree

MOMENTS = ("remap", "reset")
SELECT_RULES = ("smallest", "largest", "random")

# Padding slots hold ``n + slot``, so a tensor needs ``n + k - 1`` to fit int32.
_MAX_INT32 = 2**31 - 1

# Relative slack when turning a float32 schedule value into an entry count, so
# that float32 rounding of ``s * n`` (e.g. 0.05 * 100 -> 5.0000005) does not
# add an entry.
_COUNT_SLACK = 1e-6


class ScaleByNanoAdamState(NamedTuple):
  """State of :func:`scale_by_nanoadam`.

  Every field but ``count`` is a tree with the params' structure. For a leaf
  of ``n`` entries trained sparsely with a buffer of ``k`` entries:

  - ``indices``: shape=(k,), dtype=int32. Ascending flat indices of the
    selected entries; with a density schedule the slots past the active count
    ``k_t`` hold the out-of-range padding ``n + slot``.
  - ``mu``, ``nu``: shape=(k,), the Adam moments of those entries (``mu`` in
    ``mu_dtype``, ``nu`` in the param's dtype).

  For a leaf trained densely (matched by ``exclude``): ``indices`` has
  shape=(0,), and ``mu``, ``nu`` have the param's shape (shape=(0,) for a
  non-float excluded leaf, which is frozen).
  """

  count: jax.Array  # shape=(), dtype=jnp.int32; updates applied so far
  indices: optax.Updates
  mu: optax.Updates
  nu: optax.Updates


class _LeafPlan(NamedTuple):
  """Static, per-leaf facts decided at trace time from the params."""

  path: str
  shape: tuple[int, ...]
  dtype: Any
  sparse: bool  # trained by NanoAdam (else dense AdamW, or frozen)
  trainable: bool  # floating-point dtype
  k: int  # buffer size for a sparse leaf, 0 otherwise


def _concrete_float(value: Any) -> float | None:
  """``float(value)``, or None when it is traced (e.g. inject_hyperparams)."""
  if isinstance(value, jax.core.Tracer):
    return None
  return float(value)


def _is_int(value: Any) -> bool:
  return isinstance(value, int | jnp.integer) and not isinstance(value, bool)


def _check_static_number(name: str, value: Any) -> None:
  """Shape-fixing arguments must be Python numbers, not (traced) arrays."""
  if isinstance(value, jax.Array):
    raise TypeError(
      f"`{name}` fixes buffer sizes or the selection schedule, so it must "
      f"be a Python number, got a {type(value).__name__}. Under "
      f"optax.inject_hyperparams, list {name!r} in `static_args`."
    )


def _check_interval(name: str, value: Any) -> None:
  _check_static_number(name, value)
  if not _is_int(value) or value < 1:
    raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def _check_hyperparams(
  density: float,
  mask_interval: int,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  weight_decay: Any,
  density_schedule: Any,
  density_interval: Any,
  moments: str,
  select: str,
  mu_dtype: Any,
  seed: Any,
) -> None:
  """Raises on a bad hyperparameter, naming it."""
  _check_static_number("density", density)
  if isinstance(density, bool) or not isinstance(
    density, int | float | jnp.number
  ):
    raise TypeError(f"`density` must be a number, got {density!r}.")
  if not 0.0 < float(density) <= 1.0:
    raise ValueError(f"`density` must lie in (0, 1], got {density!r}.")
  _check_interval("mask_interval", mask_interval)
  if density_schedule is not None:
    if not callable(density_schedule):
      raise TypeError(
        "`density_schedule` must be a callable step -> fraction, got "
        f"{type(density_schedule).__name__}."
      )
    if density_interval is None:
      raise ValueError(
        "`density_schedule` needs `density_interval`: how many steps "
        "apart the schedule is re-read."
      )
  if density_interval is not None:
    if density_schedule is None:
      raise ValueError(
        "`density_interval` was given without `density_schedule`; it has "
        "no effect alone."
      )
    _check_interval("density_interval", density_interval)
  for name, value in (("b1", b1), ("b2", b2)):
    concrete = _concrete_float(value)
    if concrete is not None and not 0.0 <= concrete < 1.0:
      raise ValueError(f"`{name}` must lie in [0, 1), got {value!r}.")
  for name, value in (
    ("eps", eps),
    ("eps_root", eps_root),
    ("weight_decay", weight_decay),
  ):
    concrete = _concrete_float(value)
    if concrete is not None and not concrete >= 0.0:
      raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
  if moments not in MOMENTS:
    raise ValueError(f"`moments` must be one of {MOMENTS}, got {moments!r}.")
  if select not in SELECT_RULES:
    raise ValueError(f"`select` must be one of {SELECT_RULES}, got {select!r}.")
  if mu_dtype is not None and not jnp.issubdtype(mu_dtype, jnp.floating):
    raise ValueError(
      f"`mu_dtype` must be a floating-point dtype, got {mu_dtype!r}."
    )
  _check_static_number("seed", seed)
  if not _is_int(seed):
    raise TypeError(f"`seed` must be an int, got {seed!r}.")


def _plan(
  params: Any,
  is_excluded: Callable[[str, Any], bool],
  density: float,
) -> tuple[list[_LeafPlan], list[Any], Any]:
  """Routes each leaf and sizes its buffer; returns plans, leaves, treedef."""
  paths, leaves, treedef, sparse = _tree.route_leaves(params, is_excluded)
  plans = []
  for path, leaf, is_sparse in zip(paths, leaves, sparse, strict=True):
    n = math.prod(leaf.shape)
    k = _tree.buffer_size(density, n) if is_sparse else 0
    if is_sparse and n + k - 1 > _MAX_INT32:
      raise ValueError(
        f"Parameter {path!r} has {n} entries: with a buffer of {k} it "
        "needs flat indices beyond int32. Exclude it or split the tensor."
      )
    plans.append(
      _LeafPlan(
        path=path,
        shape=tuple(leaf.shape),
        dtype=jnp.dtype(leaf.dtype),
        sparse=is_sparse,
        trainable=_tree.is_trainable_dtype(leaf.dtype),
        k=k,
      )
    )
  return plans, leaves, treedef


def _flatten_like(treedef: Any, tree: Any, what: str) -> list[Any]:
  """Flattens ``tree`` up to the params' structure, or says what differs."""
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as error:
    raise ValueError(
      f"The {what} tree does not match the params tree: {error}"
    ) from error


def _safe_increment(count: jax.Array) -> jax.Array:
  """``count + 1``, saturating at the int32 maximum instead of wrapping."""
  return jnp.where(count < _MAX_INT32, count + 1, count)


def _one_minus(decay: Any, dtype: Any) -> jax.Array:
  """``1 - decay`` in ``dtype``, from the exact value when it is concrete.

  ``1 - float32(0.999)`` is 1.3e-5 off ``float32(1 - 0.999)``; Optax subtracts
  in Python, and so must we to match it.
  """
  concrete = _concrete_float(decay)
  if concrete is None:
    return 1 - jnp.asarray(decay, dtype)
  return jnp.asarray(1 - concrete, dtype)


def _wider_float(a: Any, b: Any) -> Any:
  """The float dtype both ``a`` and ``b`` convert to without loss.

  Written out because ``jnp.promote_types`` obeys strict dtype promotion.
  """
  a, b = jnp.dtype(a), jnp.dtype(b)
  if a == b:
    return a
  if a.itemsize != b.itemsize:
    return a if a.itemsize > b.itemsize else b
  return jnp.dtype(jnp.float32)  # bfloat16 with float16


def _adam_direction(
  grad: jax.Array,
  mu: jax.Array,
  nu: jax.Array,
  param: jax.Array,
  bias_count: jax.Array,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  weight_decay: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One AdamW step on matching arrays; returns (direction, mu, nu).

  The operation order follows ``optax.scale_by_adam`` followed by
  ``optax.add_decayed_weights``, so that a dense run matches ``optax.adamw``
  to float32 rounding.
  """
  compute = _wider_float(mu.dtype, nu.dtype)
  # Hyperparameters may be traced float32 (inject_hyperparams); cast them to
  # each buffer's dtype so bfloat16 state stays bfloat16.
  mu = (
    _one_minus(b1, mu.dtype) * grad.astype(mu.dtype)
    + jnp.asarray(b1, mu.dtype) * mu
  )
  grad_nu = grad.astype(nu.dtype)
  nu = (
    _one_minus(b2, nu.dtype) * (grad_nu * grad_nu)
    + jnp.asarray(b2, nu.dtype) * nu
  )
  count = bias_count.astype(jnp.float32)
  mu_correction = 1 - jnp.asarray(b1, jnp.float32) ** count
  nu_correction = 1 - jnp.asarray(b2, jnp.float32) ** count
  mu_hat = mu.astype(compute) / mu_correction.astype(compute)
  nu_hat = nu.astype(compute) / nu_correction.astype(compute)
  eps_root = jnp.asarray(eps_root, compute)
  eps = jnp.asarray(eps, compute)
  direction = mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps)
  weight_decay = jnp.asarray(weight_decay, compute)
  direction = direction + weight_decay * param.astype(compute)
  return direction, mu, nu


def scale_by_nanoadam(
  density: float = 0.1,
  mask_interval: int = 100,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  weight_decay: float = 0.0,
  density_schedule: Callable[[jax.Array], Any] | None = None,
  density_interval: int | None = None,
  moments: str = "remap",
  select: str = "smallest",
  exclude: _tree.Exclude = None,
  mu_dtype: Any | None = None,
  seed: int = 0,
  selection: str = "top_k",
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by Adam on each tensor's smallest-magnitude entries.

  Every ``mask_interval`` steps (and, with a ``density_schedule``, every
  ``density_interval`` steps) each parameter tensor of :math:`n` entries
  selects the :math:`k_t` entries with the smallest :math:`|\theta|`, ties
  going to the lower flat index. On the selected set :math:`S`, with the
  gradient :math:`g` and bias-correction count :math:`c`,

  .. math::

    \mu &\leftarrow \beta_1 \mu + (1 - \beta_1) g_S, \qquad
    \nu \leftarrow \beta_2 \nu + (1 - \beta_2) g_S^2, \\
    u_S &= \frac{\mu / (1 - \beta_1^c)}
      {\sqrt{\nu / (1 - \beta_2^c) + \epsilon_{root}} + \epsilon}
      + \lambda \theta_S,

  and every other entry gets an update of exactly zero. Moments are kept only
  for the :math:`k = \max(1, \lceil \rho n \rceil)` buffer slots, so the state
  is a fixed-size ``(k,)`` int32 index buffer and two ``(k,)`` moment buffers
  per tensor. On re-selection, ``moments="remap"`` keeps the moments of
  entries selected before and after (new entries start at zero, :math:`c`
  counts from the first step); ``moments="reset"`` zeroes all moments and
  restarts :math:`c` at 1. Leaves matched by ``exclude`` are trained by dense
  AdamW with the same hyperparameters.

  Args:
    density: fraction :math:`\rho \in (0, 1]` of each tensor that is updated;
      it sizes the buffers and must be a Python number.
    mask_interval: re-select every this many steps (a Python int >= 1).
    b1: exponential decay rate of the first moment.
    b2: exponential decay rate of the second moment.
    eps: term added to the denominator outside the square root.
    eps_root: term added to the denominator inside the square root.
    weight_decay: decoupled weight decay :math:`\lambda`, on selected entries.
    density_schedule: optional callable ``step -> fraction``; the active count
      is ``clip(ceil(s(t') n), 1, k)`` with :math:`t'` the last multiple of
      ``density_interval`` at or before the step (values above ``density`` are
      clipped to it). Optax schedules fit.
    density_interval: re-read the schedule (and re-select) every this many
      steps; required with a schedule.
    moments: ``"remap"`` or ``"reset"``, what a re-selection does to the
      moments.
    select: ``"smallest"`` (the method), or the ablations ``"largest"`` and
      ``"random"`` (a uniformly random subset drawn from ``seed`` and the
      step).
    exclude: None, a regex searched in each leaf's ``"/"``-joined path, or a
      callable ``(path, leaf) -> bool``; matching leaves get dense AdamW.
    mu_dtype: optional dtype of the first moment; defaults to the param's.
    seed: seed of the ``"random"`` ablation.
    selection: the bottom-k backend (see ``SELECTION_BACKENDS``); every exact
      backend selects the same entries.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import nanoadam_jax as na
    >>> params = {"w": jnp.array([0.5, -0.01, 2.0, 0.02])}
    >>> tx = optax.chain(na.scale_by_nanoadam(density=0.5), optax.scale(-0.1))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones(4)}
    >>> updates, state = tx.update(grads, state, params)
    >>> print(updates["w"] != 0)  # the two smallest of four move
    [False  True False  True]

  References:
    Zhou, Jacobs, Gadhikar, Burkholz, `Pay Attention to Small Weights
    <https://arxiv.org/abs/2506.21374>`_, NeurIPS 2025
  """
  _check_hyperparams(
    density,
    mask_interval,
    b1,
    b2,
    eps,
    eps_root,
    weight_decay,
    density_schedule,
    density_interval,
    moments,
    select,
    mu_dtype,
    seed,
  )
  _selection.check_selection(selection)
  is_excluded = _tree.compile_exclude(exclude)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  density = float(density)

  def init_fn(params: optax.Params) -> ScaleByNanoAdamState:
    plans, _, treedef = _plan(params, is_excluded, density)
    indices, mus, nus = [], [], []
    for plan in plans:
      moment_dtype = mu_dtype or plan.dtype
      if plan.sparse:
        n = math.prod(plan.shape)
        # Padding only: the first update always selects, and remaps nothing.
        indices.append(n + jnp.arange(plan.k, dtype=jnp.int32))
        mus.append(jnp.zeros((plan.k,), moment_dtype))
        nus.append(jnp.zeros((plan.k,), plan.dtype))
      elif plan.trainable:
        indices.append(jnp.zeros((0,), jnp.int32))
        mus.append(jnp.zeros(plan.shape, moment_dtype))
        nus.append(jnp.zeros(plan.shape, plan.dtype))
      else:
        indices.append(jnp.zeros((0,), jnp.int32))
        mus.append(jnp.zeros((0,), plan.dtype))
        nus.append(jnp.zeros((0,), plan.dtype))
    unflatten = treedef.unflatten
    return ScaleByNanoAdamState(
      count=jnp.zeros([], jnp.int32),
      indices=unflatten(indices),
      mu=unflatten(mus),
      nu=unflatten(nus),
    )

  def active_count(step: jax.Array, n: int, k: int) -> jax.Array | None:
    """``k_t`` for a tensor of ``n`` entries, or None without a schedule."""
    if density_schedule is None:
      return None
    read_at = step - step % density_interval
    fraction = jnp.asarray(density_schedule(read_at), jnp.float32)
    fraction = jnp.minimum(fraction, density)
    wanted = jnp.ceil(fraction * n * (1 - _COUNT_SLACK))
    return jnp.clip(wanted, 1, k).astype(jnp.int32)

  def last_selection_step(step: jax.Array) -> jax.Array:
    last = step - step % mask_interval
    if density_schedule is not None:
      last = jnp.maximum(last, step - step % density_interval)
    return last

  def scores_of(param: jax.Array, step: jax.Array, leaf_no: int) -> jax.Array:
    """Lower score = selected first."""
    flat = param.reshape(-1)
    if select == "smallest":
      return jnp.abs(flat)
    if select == "largest":
      return -jnp.abs(flat)
    key = jax.random.fold_in(jax.random.key(seed), step)
    key = jax.random.fold_in(key, leaf_no)
    return jax.random.uniform(key, flat.shape, jnp.float32)

  def reselect(
    plans: list[_LeafPlan],
    params: list[jax.Array],
    step: jax.Array,
    buffers: tuple[list, list, list],
  ) -> tuple[list, list, list]:
    """New selections for the sparse leaves, with their moments carried."""
    old_indices, old_mu, old_nu = buffers
    new_indices, new_mu, new_nu = [], [], []
    for leaf_no, (plan, param) in enumerate(zip(plans, params, strict=True)):
      n = math.prod(plan.shape)
      chosen = _selection.lowest_k_indices(
        scores_of(param, step, leaf_no),
        plan.k,
        active_count(step, n, plan.k),
        selection,
      )
      mu, nu = old_mu[leaf_no], old_nu[leaf_no]
      if moments == "reset":
        mu, nu = jnp.zeros_like(mu), jnp.zeros_like(nu)
      else:
        # Both buffers are ascending, so a binary search finds each newly
        # chosen index among the old ones.
        old = old_indices[leaf_no]
        slot = jnp.minimum(jnp.searchsorted(old, chosen), plan.k - 1)
        kept = (old[slot] == chosen) & (chosen < n)
        mu = jnp.where(kept, mu[slot], jnp.zeros_like(mu))
        nu = jnp.where(kept, nu[slot], jnp.zeros_like(nu))
      new_indices.append(chosen)
      new_mu.append(mu)
      new_nu.append(nu)
    return new_indices, new_mu, new_nu

  def update_fn(
    updates: optax.Updates,
    state: ScaleByNanoAdamState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByNanoAdamState]:
    del extra_args
    if params is None:
      raise ValueError(
        "You are using a transformation that requires the current value of "
        "parameters, but you are not passing `params` when calling "
        "`update`: NanoAdam selects entries by |param|. Call "
        "`tx.update(grads, state, params)`."
      )
    plans, param_leaves, treedef = _plan(params, is_excluded, density)
    grads = _flatten_like(treedef, updates, "gradient")
    indices = _flatten_like(treedef, state.indices, "state.indices")
    mus = _flatten_like(treedef, state.mu, "state.mu")
    nus = _flatten_like(treedef, state.nu, "state.nu")
    for plan, grad in zip(plans, grads, strict=True):
      if tuple(grad.shape) != plan.shape:
        raise ValueError(
          f"Gradient of {plan.path!r} has shape {tuple(grad.shape)}, but "
          f"the param has shape {plan.shape}."
        )

    step = state.count
    sparse = [i for i, plan in enumerate(plans) if plan.sparse and plan.k]

    def pick(values: list[Any]) -> list[Any]:
      return [values[i] for i in sparse]

    if sparse:
      should_select = step % mask_interval == 0
      if density_schedule is not None:
        should_select |= step % density_interval == 0
      # One cond for all leaves: the steady step skips selection entirely and
      # the jitted update compiles once.
      selected = jax.lax.cond(
        should_select,
        lambda buffers: reselect(
          pick(plans), pick(param_leaves), step, buffers
        ),
        lambda buffers: buffers,
        (pick(indices), pick(mus), pick(nus)),
      )
      for i, chosen, mu, nu in zip(sparse, *selected, strict=True):
        indices[i], mus[i], nus[i] = chosen, mu, nu

    dense_count = _safe_increment(step)
    sparse_count = dense_count
    if moments == "reset":
      sparse_count = step - last_selection_step(step) + 1
    hyper = dict(
      b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay
    )
    # With a schedule, padding slots (index >= n) fill with zero gradients,
    # so their moments and direction stay exactly zero and their writes drop.
    mode = "fill" if density_schedule is not None else "promise_in_bounds"
    out = []
    for i, plan in enumerate(plans):
      param, grad = param_leaves[i], grads[i]
      if not plan.trainable:
        out.append(jnp.zeros(plan.shape, plan.dtype))
      elif not plan.sparse:
        direction, mus[i], nus[i] = _adam_direction(
          grad, mus[i], nus[i], param, dense_count, **hyper
        )
        out.append(direction.astype(plan.dtype))
      elif plan.k == 0:
        out.append(jnp.zeros(plan.shape, plan.dtype))
      else:
        where = indices[i]
        gather = dict(
          mode=mode,
          fill_value=0 if mode == "fill" else None,
          indices_are_sorted=True,
          unique_indices=True,
        )
        direction, mus[i], nus[i] = _adam_direction(
          grad.reshape(-1).at[where].get(**gather),
          mus[i],
          nus[i],
          param.reshape(-1).at[where].get(**gather),
          sparse_count,
          **hyper,
        )
        dense = jnp.zeros((math.prod(plan.shape),), plan.dtype)
        dense = dense.at[where].set(
          direction.astype(plan.dtype),
          mode="drop" if mode == "fill" else "promise_in_bounds",
          indices_are_sorted=True,
          unique_indices=True,
        )
        out.append(dense.reshape(plan.shape))

    unflatten = treedef.unflatten
    new_state = ScaleByNanoAdamState(
      count=dense_count,
      indices=unflatten(indices),
      mu=unflatten(mus),
      nu=unflatten(nus),
    )
    return unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def nanoadam(
  learning_rate: optax.ScalarOrSchedule,
  density: float = 0.1,
  mask_interval: int = 100,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  weight_decay: float = 0.0,
  density_schedule: Callable[[jax.Array], Any] | None = None,
  density_interval: int | None = None,
  moments: str = "remap",
  select: str = "smallest",
  exclude: _tree.Exclude = None,
  mu_dtype: Any | None = None,
  seed: int = 0,
  selection: str = "top_k",
) -> optax.GradientTransformationExtraArgs:
  r"""NanoAdam: AdamW on each tensor's smallest-magnitude entries only.

  Finetunes a pretrained network by updating, in every parameter tensor, only
  the fraction ``density`` of entries with the smallest :math:`|\theta|`,
  re-selected every ``mask_interval`` steps. The large pretrained weights stay
  frozen bit for bit, which limits forgetting, and Adam moments are kept for
  the selected entries only. The update on the selected set is

  .. math::

    u_S = -\eta_t \left( \frac{\hat\mu}{\sqrt{\hat\nu + \epsilon_{root}}
      + \epsilon} + \lambda \theta_S \right),

  and zero elsewhere; see :func:`scale_by_nanoadam` for the moments, the
  re-selection and the options. With ``density=1.0`` it equals
  ``optax.adamw`` with the same hyperparameters.

  Args:
    learning_rate: a float or an Optax schedule :math:`\eta_t`.
    density: fraction of each tensor that is updated (a Python number).
    mask_interval: re-select every this many steps.
    b1: exponential decay rate of the first moment.
    b2: exponential decay rate of the second moment.
    eps: term added to the denominator outside the square root.
    eps_root: term added to the denominator inside the square root.
    weight_decay: decoupled weight decay, times the learning rate.
    density_schedule: optional callable ``step -> fraction`` in
      ``(0, density]``.
    density_interval: re-read the schedule every this many steps.
    moments: ``"remap"`` or ``"reset"``.
    select: ``"smallest"``, ``"largest"`` or ``"random"``.
    exclude: regex on the ``"/"``-joined leaf path, or ``(path, leaf) ->
      bool``; matching leaves are trained by dense AdamW.
    mu_dtype: optional dtype of the first moment.
    seed: seed of the ``"random"`` ablation.
    selection: the bottom-k backend.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``params``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import nanoadam_jax as na
    >>> params = {"w": jnp.linspace(-1.0, 1.0, 10), "head": jnp.zeros(3)}
    >>> loss = lambda p: jnp.sum((p["w"] - 0.3) ** 2) + jnp.sum(p["head"] ** 2)
    >>> tx = na.nanoadam(1e-2, density=0.2, mask_interval=10, exclude="head")
    >>> state = tx.init(params)
    >>> for _ in range(20):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(jnp.sum(params["w"] != jnp.linspace(-1.0, 1.0, 10)))
    2

  References:
    Zhou, Jacobs, Gadhikar, Burkholz, `Pay Attention to Small Weights
    <https://arxiv.org/abs/2506.21374>`_, NeurIPS 2025
  """
  return optax.chain(
    scale_by_nanoadam(
      density,
      mask_interval,
      b1=b1,
      b2=b2,
      eps=eps,
      eps_root=eps_root,
      weight_decay=weight_decay,
      density_schedule=density_schedule,
      density_interval=density_interval,
      moments=moments,
      select=select,
      exclude=exclude,
      mu_dtype=mu_dtype,
      seed=seed,
      selection=selection,
    ),
    optax.scale_by_learning_rate(learning_rate),
  )
