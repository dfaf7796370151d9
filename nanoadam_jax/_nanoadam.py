"""NanoAdam: Adam on the smallest-magnitude entries of each tensor.

Implementation of "Pay Attention to Small Weights" (Zhou, Jacobs, Gadhikar,
Burkholz; NeurIPS 2025, https://arxiv.org/abs/2506.21374) as an Optax gradient
transformation with fixed-size sparse state.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nanoadam_jax import _adam
from nanoadam_jax import _checks
from nanoadam_jax import _config
from nanoadam_jax import _dense_leaf
from nanoadam_jax import _grouping
from nanoadam_jax import _leaf
from nanoadam_jax import _options
from nanoadam_jax import _rounding
from nanoadam_jax import _sparse_leaf
from nanoadam_jax import _state
from nanoadam_jax import _tree


def _plan(
  params: Any,
  exclude: _tree.LeafRule,
  mask: _tree.LeafRule,
  config: _config.LeafConfig,
) -> tuple[list[_leaf.Leaf], list[Any], Any]:
  """Routes each leaf to its kind; returns the leaves, the param leaves and
  the treedef.

  A leaf is sparse unless ``exclude`` matches it; an excluded leaf is dense
  if it is a non-empty float, else frozen, and so is an empty one. A leaf
  outside the weight-decay ``mask`` gets the config without decay.
  """
  is_decayed = mask(params)
  paths, leaves, treedef, sparse = _tree.route_leaves(params, exclude(params))
  undecayed = dataclasses.replace(config, weight_decay=0.0)
  plans: list[_leaf.Leaf] = []
  sparse_no = 0
  for tree_no, (path, leaf, is_sparse) in enumerate(
    zip(paths, leaves, sparse, strict=True)
  ):
    shape, dtype = tuple(leaf.shape), jnp.dtype(leaf.dtype)
    leaf_config = config if is_decayed(path, leaf) else undecayed
    if math.prod(shape) == 0 or not (
      is_sparse or _tree.is_trainable_dtype(dtype)
    ):
      plans.append(_dense_leaf.FrozenLeaf(path, shape, dtype))
    elif is_sparse:
      plans.append(
        _sparse_leaf.SparseLeaf.build(
          leaf_config, path, shape, dtype, sparse_no, tree_no
        )
      )
      sparse_no += 1
    else:
      plans.append(
        _dense_leaf.DenseLeaf(leaf_config, path, shape, dtype, tree_no)
      )
  return plans, leaves, treedef


def _at_update(
  leaves: list[_leaf.Leaf], config: _config.LeafConfig, step: jax.Array
) -> list[_leaf.Leaf]:
  """``leaves`` with what ``step`` gives each of them computed once for all:
  the rounding keys of every trained leaf (:func:`_rounding.update_keys`),
  and the active counts of the sparse leaves of each row size and ``k``.

  Computed leaf by leaf, the same small computations made a MiniLM's update
  trace some 20,000 more operations.
  """
  trained = [leaf for leaf in leaves if leaf.kind != "frozen"]
  keys = iter([None] * len(trained))
  if config.rounding == "stochastic" and trained:
    keys = iter(
      _rounding.update_keys(
        config.seed, step, [leaf.tree_no for leaf in trained]
      )
    )
  counts = {}
  at_update = []
  for leaf in leaves:
    if leaf.kind == "frozen":
      at_update.append(leaf)
      continue
    given = dict(keys=next(keys))
    if leaf.kind == "sparse":
      rows = (leaf.layout.row_size, leaf.layout.k)
      if rows not in counts:
        counts[rows] = leaf.active_count_change(step)
      given["counts"] = counts[rows]
    at_update.append(dataclasses.replace(leaf, **given))
  return at_update


def _flatten_like(treedef: Any, tree: Any, what: str) -> list[Any]:
  """Flattens ``tree`` up to the params' structure, or says what differs.

  The message shows both structures with ``*`` for leaves: JAX's own error
  prints every array of the tree.
  """
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError):
    got = jax.tree.structure(tree, is_leaf=lambda x: x is None)
    raise ValueError(
      f"The {what} tree does not match the params tree: the params are "
      f"{treedef}, the {what} {got}."
    ) from None


# :func:`nanoadam` hands its learning-rate step to :func:`scale_by_nanoadam`'s
# update under this extra-argument name, so that the step scales the k
# selected values before they are written into the dense update: one pass over
# each tensor instead of a second, dense multiply.
_STEP_SIZE_ARG = "_nanoadam_step_size"


def scale_by_nanoadam(
  density: float = 0.1,
  mask_interval: int = 100,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  density_schedule: Callable[[jax.Array], Any] | None = None,
  density_interval: int | None = None,
  moments: _options.Moments = "remap",
  select: _options.Select = "smallest",
  exclude: _tree.Exclude = None,
  mu_dtype: Any | None = None,
  mask: _tree.Mask = None,
  nesterov: bool = False,
  nu_dtype: Any | None = None,
  rounding: _options.Rounding = "stochastic",
  seed: int | jax.Array = 0,
  selection: _options.Selection = "auto",
  granularity: _options.Granularity = "tensor",
  block_size: int | None = None,
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

  Re-selection is a ``jax.lax.cond`` on the step count, so a jitted step
  compiles once and the steady steps skip it. (Under ``jax.vmap`` with a
  batched step count, a ``cond`` becomes a ``select`` that runs both
  branches every step; keep the count unbatched, e.g. vmap over seeds or
  learning rates with a shared state count.)

  Args:
    density: fraction :math:`\rho \in (0, 1]` of each tensor that is updated;
      it sizes the buffers and must be a Python number. A product
      :math:`\rho n` within float64 rounding of an integer counts as that
      integer: 0.07 of 100 entries is 7, not 8.
    mask_interval: re-select every this many steps (a Python int >= 1).
    b1: exponential decay rate of the first moment.
    b2: exponential decay rate of the second moment.
    eps: term added to the denominator outside the square root.
    eps_root: term added to the denominator inside the square root.
    weight_decay: decoupled weight decay :math:`\lambda`, on selected entries:
      a number, or a schedule ``step -> decay`` read at the count of updates
      applied so far, as ``optax.adamw`` reads one.
    density_schedule: optional callable ``step -> fraction``; the active count
      is ``clip(ceil(s(t') n), 1, k)`` with :math:`t'` the last multiple of
      ``density_interval`` at or before the step (values above ``density`` are
      clipped to it, NaN counts as 0, and a product within float32 rounding
      of an integer counts as that integer, as for ``density``). Optax
      schedules fit.
    density_interval: re-read the schedule (and re-select) every this many
      steps; required with a schedule.
    moments: ``"remap"`` or ``"reset"``, what a re-selection does to the
      moments.
    select: ``"smallest"`` (the method), or the ablations ``"largest"`` and
      ``"random"`` (a uniformly random subset drawn from ``seed`` and the
      step).
    exclude: which leaves get dense AdamW instead: None; a regex searched
      in each leaf's ``"/"``-joined path (``init`` warns when it matches no
      path); a callable ``(path, leaf) -> bool``; a tree of bools shaped
      like the params, or a prefix of them, as Optax's masks (True:
      excluded); or a callable ``params -> such a tree``. A callable with
      one required positional parameter is taken as ``params -> tree``, one
      with two as ``(path, leaf) -> bool``. Paths join dict keys, sequence
      indices and attribute names, e.g. ``"encoder/layers/0/kernel"``; a
      Flax NNX ``Variable``'s trailing ``value`` is dropped, so NNX state
      gives ``"linear/kernel"``. Bool trees are matched to the params by
      these paths.
    mu_dtype: optional storage dtype of the first moment (default: the
      param's). Whatever the param's and the moments' dtypes, each step
      computes the moments and the update in float32 (float64 for float64
      params) and rounds once: into the stored moments, with ``rounding``,
      and into the update, returned in the param's dtype. So bfloat16 and
      float16 params train like float32 ones, where Optax computes in the
      param's precision.
    nu_dtype: the same for the second moment. With ``b2=0.999`` its
      per-step change is below half a bfloat16 ulp, so round-to-nearest
      storage stalls or drifts; see ``rounding``.
    rounding: how a moment stored narrower than the computation (float32) is
      rounded: ``"stochastic"`` (unbiased; random bits from ``seed``, the
      step and the leaf, so runs and checkpoint resumes repeat bit for bit)
      or ``"nearest"`` (a plain cast). It applies to 16-bit params' moments
      by default.
    mask: which leaves get weight decay, as ``optax.adamw``'s ``mask``: None
      (all), a tree of bools shaped like the params (or a prefix; True:
      decayed), or a callable ``params -> such a tree``. It applies to
      sparse and excluded leaves alike.
    nesterov: Nesterov momentum, as ``optax.scale_by_adam(nesterov=True)``:
      :math:`\hat\mu = \beta_1 \mu / (1 - \beta_1^{c+1}) + (1 - \beta_1)
      g / (1 - \beta_1^c)`.
    seed: seed of the ``"random"`` ablation and of stochastic rounding: an
      int, or an integer array (it may be traced, e.g. injected by
      ``optax.inject_hyperparams``).
    selection: the bottom-k backend (see ``SELECTION_BACKENDS``): ``"auto"``
      (the fastest exact one for the platform, ``"radix"``), ``"top_k"``
      (the reference), ``"radix"``, or ``"approx"`` (``approx_min_k``, not
      exact). Every exact backend selects the same entries.
    granularity: ``"tensor"`` (the paper's Algorithm 1: the ``k`` smallest
      of the whole tensor) or ``"block"`` (what the paper's implementation
      does, per its appendix): the flattened tensor is cut into contiguous
      blocks of ``block_size`` entries (the last one may be shorter) and
      each block selects ``max(1, ceil(density * block_size))`` of its own.
      Block-local indices take int16 for blocks of at most 32768 entries,
      work for tensors beyond 2**31 entries, and keep selection on the
      device that holds the block when params are sharded.
    block_size: entries per block; required with ``granularity="block"``.

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
  _checks.check_hyperparams(
    density=density,
    mask_interval=mask_interval,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    weight_decay=weight_decay,
    density_schedule=density_schedule,
    density_interval=density_interval,
    moments=moments,
    select=select,
    mu_dtype=mu_dtype,
    seed=seed,
  )
  if density_schedule is not None:
    _checks.warn_if_schedule_leaves_range(
      density_schedule, float(density), density_interval
    )
  _checks.check_moment_dtype("nu_dtype", nu_dtype)
  _options.check_choice("rounding", rounding, _options.ROUNDINGS)
  _options.check_choice("selection", selection, _options.SELECTION_BACKENDS)
  _checks.check_granularity(granularity, block_size)
  _checks.check_flag("nesterov", nesterov)
  exclude_rule = _tree.compile_exclude(exclude)
  mask_rule = _tree.compile_mask(mask)
  config = _config.LeafConfig(
    density=float(density),
    # Intervals past the int32 step count select once: never again.
    mask_interval=_config.as_step_interval(mask_interval),
    density_schedule=density_schedule,
    density_interval=(
      None
      if density_interval is None
      else _config.as_step_interval(density_interval)
    ),
    moments=moments,
    select=select,
    selection=selection,
    block_size=block_size if granularity == "block" else None,
    mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype),
    nu_dtype=None if nu_dtype is None else jnp.dtype(nu_dtype),
    rounding=rounding,
    seed=seed,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    weight_decay=weight_decay,
    nesterov=nesterov,
  )

  def init_fn(params: optax.Params) -> _state.ScaleByNanoAdamState:
    leaves, _, treedef = _plan(params, exclude_rule, mask_rule, config)
    _tree.warn_if_unmatched(exclude, [leaf.path for leaf in leaves])
    buffers = [leaf.init() for leaf in leaves]
    return _state.assemble(jnp.zeros([], jnp.int32), treedef, buffers)

  def update_fn(
    updates: optax.Updates,
    state: _state.ScaleByNanoAdamState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, _state.ScaleByNanoAdamState]:
    step_size = extra_args.get(_STEP_SIZE_ARG)
    if params is None:
      raise ValueError(
        "You are using a transformation that requires the current value of "
        "parameters, but you are not passing `params` when calling "
        "`update`: NanoAdam selects entries by |param|. Call "
        "`tx.update(grads, state, params)`."
      )
    _state.check_is_state(state, "scale_by_nanoadam")
    step = state.count
    # A weight-decay schedule is read here, once for every leaf.
    leaves, param_leaves, treedef = _plan(
      params, exclude_rule, mask_rule, config.at_step(step)
    )
    leaves = _at_update(leaves, config, step)
    grads = [
      _tree.as_array(grad)
      for grad in _flatten_like(treedef, updates, "gradient")
    ]
    buffers = list(
      zip(
        _flatten_like(treedef, state.indices, "state.indices"),
        _flatten_like(treedef, state.mu, "state.mu"),
        _flatten_like(treedef, state.nu, "state.nu"),
        strict=True,
      )
    )
    for leaf, grad, leaf_buffers in zip(leaves, grads, buffers, strict=True):
      if tuple(grad.shape) != leaf.shape:
        raise ValueError(
          f"Gradient of {leaf.path!r} has shape {tuple(grad.shape)}, but "
          f"the param has shape {leaf.shape}."
        )
      _leaf.check_buffers(leaf, leaf_buffers)

    # 1. Re-select, every mask_interval (or density_interval) steps.
    sparse = [i for i, leaf in enumerate(leaves) if leaf.kind == "sparse"]
    sparse_leaves = [leaves[i] for i in sparse]
    sparse_params = [param_leaves[i] for i in sparse]
    if sparse:
      should_select = config.selects_at(step)
      # One cond per group of leaves: the steady step skips selection
      # entirely and the jitted update compiles once. (A single cond over all
      # leaves made XLA copy every param into it: +265 MiB on a 128 MiB
      # model, measured.) A group traces and compiles its selection once, not
      # once per leaf (see `_grouping`).
      groups = _grouping.selection_groups(
        sparse_leaves, sparse_params, [buffers[i] for i in sparse]
      )
      for group in groups:
        members = [sparse[j] for j in group]

        def reselect(old, members=members):
          return _grouping.reselect_group(
            [leaves[i] for i in members],
            [param_leaves[i] for i in members],
            step,
            old,
          )

        new = jax.lax.cond(
          should_select,
          reselect,
          lambda old: old,
          [buffers[i] for i in members],
        )
        for i, leaf_buffers in zip(members, new, strict=True):
          buffers[i] = tuple(leaf_buffers)

    # 2. Step each leaf: Adam on the selected entries of a sparse one, AdamW
    # on all of a dense one, zero on a frozen one. Sparse leaves of one kind
    # share one Adam program (see `_grouping.step_group`), and small leaves
    # of one dtype one scatter for their updates (`_grouping.write_group`).
    stepped: list[Any] = [None] * len(leaves)
    for i, leaf in enumerate(leaves):
      if leaf.kind != "sparse":
        stepped[i] = leaf.step(
          grads[i], param_leaves[i], buffers[i], step, step_size
        )
    sparse_buffers = [buffers[i] for i in sparse]
    unwritten: list[Any] = [None] * len(sparse)
    for group in _grouping.step_groups(
      sparse_leaves, sparse_params, sparse_buffers
    ):
      results = _grouping.step_group(
        [sparse_leaves[j] for j in group],
        [grads[sparse[j]] for j in group],
        [sparse_params[j] for j in group],
        [sparse_buffers[j] for j in group],
        step,
        step_size,
      )
      for j, result in zip(group, results, strict=True):
        unwritten[j] = result
    for group in _grouping.write_groups(
      sparse_leaves, sparse_params, [s.gathered for s in unwritten]
    ):
      results = _grouping.write_group(
        [sparse_leaves[j] for j in group],
        [unwritten[j] for j in group],
        [sparse_buffers[j] for j in group],
        [sparse_params[j] for j in group],
        step_size,
      )
      for j, result in zip(group, results, strict=True):
        stepped[sparse[j]] = result
    out = [update for update, _ in stepped]
    new_buffers = [leaf_buffers for _, leaf_buffers in stepped]
    count = optax.safe_increment(step)
    return treedef.unflatten(out), _state.assemble(count, treedef, new_buffers)

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
  weight_decay: optax.ScalarOrSchedule = 0.0,
  density_schedule: Callable[[jax.Array], Any] | None = None,
  density_interval: int | None = None,
  moments: _options.Moments = "remap",
  select: _options.Select = "smallest",
  exclude: _tree.Exclude = None,
  mu_dtype: Any | None = None,
  mask: _tree.Mask = None,
  nesterov: bool = False,
  nu_dtype: Any | None = None,
  rounding: _options.Rounding = "stochastic",
  seed: int | jax.Array = 0,
  selection: _options.Selection = "auto",
  granularity: _options.Granularity = "tensor",
  block_size: int | None = None,
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
  ``optax.adamw`` given the same hyperparameters, weight decay included:
  Optax's default ``weight_decay`` is ``1e-4`` and NanoAdam's ``0``, so
  ``nanoadam(lr, 1.0)`` equals ``optax.adamw(lr, weight_decay=0.0)`` (see
  the second example).

  It computes ``optax.chain(scale_by_nanoadam(...),
  optax.scale_by_learning_rate(learning_rate))`` and has that chain's state,
  but multiplies only the selected entries by the step size, before they are
  written into the dense update, which saves a pass over every tensor. (For
  16-bit params it is also more precise: it rounds the float32 product
  once, where the chain rounds the direction and then the product.)

  Args:
    learning_rate: a float or an Optax schedule :math:`\eta_t`.
    density: fraction of each tensor that is updated (a Python number).
    mask_interval: re-select every this many steps.
    b1: exponential decay rate of the first moment.
    b2: exponential decay rate of the second moment.
    eps: term added to the denominator outside the square root.
    eps_root: term added to the denominator inside the square root.
    weight_decay: decoupled weight decay, times the learning rate; a number
      or a schedule ``step -> decay``, as in ``optax.adamw``.
    density_schedule: optional callable ``step -> fraction`` in
      ``(0, density]``.
    density_interval: re-read the schedule every this many steps.
    moments: ``"remap"`` or ``"reset"``.
    select: ``"smallest"``, ``"largest"`` or ``"random"``.
    exclude: which leaves dense AdamW trains: a regex on the ``"/"``-joined
      leaf path (``"linear/kernel"`` for Flax NNX state), ``(path, leaf) ->
      bool``, a tree of bools shaped like the params, or ``params -> such a
      tree`` (see :func:`scale_by_nanoadam`).
    mu_dtype: optional storage dtype of the first moment.
    nu_dtype: optional storage dtype of the second moment.
    rounding: ``"stochastic"`` (unbiased) or ``"nearest"``, for moments
      stored narrower than float32 (16-bit params' by default).
    mask: which leaves get weight decay, as ``optax.adamw``'s ``mask``.
    nesterov: Nesterov momentum, as ``optax.adamw(nesterov=True)``.
    seed: seed of the ``"random"`` ablation and of stochastic rounding (an
      int, or an integer array, which may be traced).
    selection: the bottom-k backend; ``"auto"`` picks the fastest exact one.
    granularity: ``"tensor"`` (the paper's Algorithm 1) or ``"block"`` (per
      contiguous block of ``block_size`` entries, as the paper's
      implementation selects).
    block_size: entries per block, with ``granularity="block"``.

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

    At density 1 it is AdamW; Optax's default decay is 1e-4, NanoAdam's 0:

    >>> def first_update(tx):
    ...   return tx.update(grads, tx.init(params), params)[0]["w"]
    >>> ours = first_update(na.nanoadam(1e-2, 1.0))
    >>> same = first_update(optax.adamw(1e-2, weight_decay=0.0))
    >>> decayed = first_update(optax.adamw(1e-2))  # weight_decay=1e-4
    >>> bool(jnp.allclose(ours, same)), bool(jnp.any(ours != decayed))
    (True, True)

  References:
    Zhou, Jacobs, Gadhikar, Burkholz, `Pay Attention to Small Weights
    <https://arxiv.org/abs/2506.21374>`_, NeurIPS 2025
  """
  core = scale_by_nanoadam(
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
    nu_dtype=nu_dtype,
    rounding=rounding,
    mask=mask,
    nesterov=nesterov,
    seed=seed,
    selection=selection,
    granularity=granularity,
    block_size=block_size,
  )
  learning_rate_tx = optax.scale_by_learning_rate(learning_rate)

  def init_fn(params: optax.Params) -> tuple[Any, Any]:
    return core.init(params), learning_rate_tx.init(params)

  def update_fn(
    updates: optax.Updates,
    state: tuple[Any, Any],
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, tuple[Any, Any]]:
    is_pair = isinstance(state, tuple) and len(state) == 2
    _state.check_is_state(state[0] if is_pair else state, "nanoadam")
    core_state, learning_rate_state = state
    # Optax's own step (-learning_rate(count)) and count, read off a scalar
    # as wide as the step computes in (float32, float64 for float64 params):
    # a bfloat16 rate would round 1e-3 to 0.000999.
    widest = _adam.compute_dtype(
      *(
        leaf.dtype
        for leaf in jax.tree.leaves(params)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
      )
    )
    step_size, learning_rate_state = learning_rate_tx.update(
      jnp.ones((), widest), learning_rate_state
    )
    updates, core_state = core.update(
      updates, core_state, params, **extra_args, **{_STEP_SIZE_ARG: step_size}
    )
    return updates, (core_state, learning_rate_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
