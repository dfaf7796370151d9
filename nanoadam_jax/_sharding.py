"""Shardings of a NanoAdam optimizer state, derived from the params' ones.

Optax states usually copy the params' structure and shapes, so the params'
shardings fit them as they are. NanoAdam's do not: a sparse leaf keeps fixed
``(k,)`` index and moment buffers (``(rows, k)`` blockwise), whose shape has
nothing to do with the param's. :func:`state_shardings` walks any optimizer
state that contains :class:`ScaleByNanoAdamState` (inside ``optax.chain``,
``MultiSteps``, ``inject_hyperparams``, ``apply_if_finite``, ...) and gives
every leaf a :class:`jax.sharding.NamedSharding`;
:func:`annotate_optimizer_sharding` hands the same choice to
``flax.nnx.Optimizer``.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.sharding import Sharding

from nanoadam_jax import _state
from nanoadam_jax import _tree
from nanoadam_jax._state import ScaleByNanoAdamState


def _is_sharding_leaf(x: Any) -> bool:
  return x is None or isinstance(x, Sharding | PartitionSpec)


def _resolve_mesh(mesh: Mesh | None, shardings: list[Any]) -> Mesh:
  """The mesh to build shardings on: given, from the params', or ambient."""
  if mesh is not None:
    return mesh
  for sharding in shardings:
    if isinstance(sharding, NamedSharding):
      return sharding.mesh
  ambient = jax.sharding.get_mesh()
  if not ambient.empty:
    return ambient
  raise ValueError(
    "No mesh to build the state's shardings on: `param_shardings` holds no "
    "NamedSharding and no mesh is set. Pass `mesh=` or call this under "
    "`jax.set_mesh(mesh)`."
  )


def _as_spec(path: str, sharding: Any) -> PartitionSpec:
  """The PartitionSpec of one param's sharding."""
  if sharding is None:
    return PartitionSpec()
  if isinstance(sharding, PartitionSpec):
    return sharding
  if isinstance(sharding, NamedSharding):
    return sharding.spec
  if sharding.is_fully_replicated:
    return PartitionSpec()
  raise TypeError(
    f"The sharding of parameter {path!r} is a {type(sharding).__name__}; "
    "state_shardings needs NamedSharding or PartitionSpec leaves to know "
    "which mesh axes a tensor is split over."
  )


def _entry_axes(entry: Any) -> tuple[str, ...]:
  """Mesh axis names of one PartitionSpec entry (None, a name or a tuple)."""
  if entry is None or entry is PartitionSpec.UNCONSTRAINED:
    return ()
  if isinstance(entry, str):
    return (entry,)
  return tuple(entry)


def _axes_size(mesh: Mesh, axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[axis] for axis in axes)


def _fits(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> bool:
  """Whether ``spec`` splits an array of ``shape`` evenly on ``mesh``."""
  if len(spec) > len(shape):
    return False
  return all(
    size % _axes_size(mesh, _entry_axes(entry)) == 0
    for entry, size in zip(spec, shape, strict=False)
  )


def _buffer_spec(
  param_spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh
) -> PartitionSpec:
  """Splits a sparse buffer's leading axis over the param's mesh axes.

  The axes are taken in the order they shard the param, and trailing ones are
  dropped until their total size divides the buffer's leading dimension; with
  none left the buffer is replicated.
  """
  axes = [axis for entry in param_spec for axis in _entry_axes(entry)]
  while axes:
    if shape[0] % _axes_size(mesh, axes) == 0:
      return PartitionSpec(axes[0] if len(axes) == 1 else tuple(axes))
    axes.pop()
  return PartitionSpec()


def state_shardings(
  state: Any,
  param_shardings: Any,
  mesh: Mesh | None = None,
) -> Any:
  """Shardings for an optimizer state holding NanoAdam, from the params'.

  Use it for the ``out_shardings`` of a jitted ``init`` or train step, for
  :func:`jax.device_put`, or as the restore target of a checkpoint. The rules,
  leaf by leaf:

  - In each :class:`ScaleByNanoAdamState`, a sparse leaf's index, ``mu`` and
    ``nu`` buffers (shape ``(k,)``, or ``(rows, k)`` blockwise) are split along
    their first axis over the same mesh axes as the param (all of them, in the
    order they split the param), so each device keeps ``1/D`` of them, as it
    keeps ``1/D`` of the param. When ``k`` is not divisible by the devices
    those axes span, trailing axes are dropped until it is, down to
    replication. Pick ``density`` so that ``k = ceil(density * n)`` divides
    evenly to keep the state fully sharded.
  - A leaf trained densely (``exclude``) keeps ``mu`` and ``nu`` of the
    param's shape, sharded like the param.
  - Any other subtree whose leaf paths are params' paths (``MultiSteps``'
    gradient accumulator, Adam's moments under ``optax.multi_transform``,
    ...) is sharded like the params, wherever a param's sharding splits that
    leaf evenly.
  - Everything else (step counts, injected hyperparameters, ``count``) is
    replicated.

  The selected entries are scattered over the whole tensor, so a sharded
  buffer does not line up with the param shard that owns its entries: the
  jitted update gathers across devices, as it must for the per-tensor bottom-k
  selection anyway. What sharding the buffers saves is memory: replicated, a
  density-0.1 state costs each device 0.3 of the param's full size, more than
  a sharded AdamW on 8 devices.

  Args:
    state: the optimizer state, concrete or abstract (from
      ``jax.eval_shape(tx.init, params)``), with NanoAdam anywhere inside.
    param_shardings: a tree with the params' structure whose leaves are
      :class:`jax.sharding.NamedSharding` or
      :class:`jax.sharding.PartitionSpec` (``None``: replicated), e.g.
      ``jax.tree.map(lambda p: p.sharding, params)`` or
      ``nnx.get_named_sharding(nnx.state(model, nnx.Param), mesh)``. Leaves
      are matched to the state by their ``"/"``-joined paths.
    mesh: the mesh of the returned shardings; by default the one of the
      NamedShardings in ``param_shardings``, else the one set by
      :func:`jax.set_mesh`.

  Returns:
    A tree with the structure of ``state`` whose leaves are
    :class:`jax.sharding.NamedSharding`.

  Raises:
    ValueError: a parameter path of the state has no sharding, a param's
      spec names an axis the mesh lacks, or no mesh is known.
    TypeError: a param's sharding is neither a NamedSharding, a
      PartitionSpec, None nor fully replicated.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import nanoadam_jax as na
    >>> mesh = jax.make_mesh((1,), ("fsdp",))
    >>> params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}
    >>> param_shardings = {
    ...     "w": NamedSharding(mesh, P("fsdp", None)),
    ...     "b": NamedSharding(mesh, P()),
    ... }
    >>> tx = na.nanoadam(1e-3, density=0.125, exclude="b")
    >>> abstract = jax.eval_shape(tx.init, params)
    >>> shardings = na.state_shardings(abstract, param_shardings)
    >>> shardings[0].indices["w"].spec  # the (256,) buffer of w
    P('fsdp',)
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
  """
  with_path = jax.tree_util.tree_leaves_with_path(
    param_shardings, is_leaf=_is_sharding_leaf
  )
  param_paths = [_tree.path_str(path) for path, _ in with_path]
  param_leaves = [leaf for _, leaf in with_path]
  mesh = _resolve_mesh(mesh, param_leaves)
  specs = {
    path: _as_spec(path, sharding)
    for path, sharding in zip(param_paths, param_leaves, strict=True)
  }
  for path, spec in specs.items():
    for axis in (axis for entry in spec for axis in _entry_axes(entry)):
      if axis not in mesh.axis_names:
        raise ValueError(
          f"The sharding of parameter {path!r} ({spec}) splits over mesh "
          f"axis {axis!r}, which the mesh lacks: its axes are "
          f"{tuple(mesh.axis_names)}."
        )
  replicated = NamedSharding(mesh, PartitionSpec())

  def named(spec: PartitionSpec) -> NamedSharding:
    return NamedSharding(mesh, spec)

  def param_spec(path: str) -> PartitionSpec:
    try:
      return specs[path]
    except KeyError:
      known = ", ".join(repr(p) for p in list(specs)[:5])
      raise ValueError(
        f"The optimizer state has parameter {path!r}, which "
        f"`param_shardings` lacks (it has {known}, ...)."
      ) from None

  def like_param(path: str, leaf: Any) -> NamedSharding:
    spec, shape = param_spec(path), _shape(leaf)
    if math.prod(shape) == 0 or not _fits(spec, shape, mesh):
      return replicated
    return named(spec)

  def nanoadam_shardings(node: ScaleByNanoAdamState) -> ScaleByNanoAdamState:
    # Matched by path, not position: a leaf without a buffer may hold a
    # zero-size array or an empty node, and then the three trees differ.
    buffers = {}  # path -> sharding of a sparse leaf's buffers
    for path, index in zip(*_tree.leaf_paths(node.indices)[:2], strict=True):
      if math.prod(_shape(index)) > 0:
        buffers[path] = named(
          _buffer_spec(param_spec(path), _shape(index), mesh)
        )

    def index_sharding(path: str, _: Any) -> NamedSharding:
      return buffers.get(path, replicated)

    def moment_sharding(path: str, leaf: Any) -> NamedSharding:
      if path in buffers:
        return buffers[path]
      return like_param(path, leaf)  # dense AdamW moments, or frozen

    return node._replace(
      count=jax.tree.map(lambda _: replicated, node.count),
      indices=_map_with_path_str(index_sharding, node.indices),
      mu=_map_with_path_str(moment_sharding, node.mu),
      nu=_map_with_path_str(moment_sharding, node.nu),
    )

  path_set = set(specs)

  def params_like(node: Any) -> bool:
    if _state.is_state(node):
      return False
    paths, _, _ = _tree.leaf_paths(node)
    # A subset, for masked states (optax.masked leaves out some params).
    return bool(paths) and set(paths) <= path_set

  def is_leaf(node: Any) -> bool:
    return _state.is_state(node) or params_like(node)

  nodes, treedef = jax.tree_util.tree_flatten(state, is_leaf=is_leaf)
  out = []
  for node in nodes:
    if _state.is_state(node):
      out.append(nanoadam_shardings(node))
    elif params_like(node):
      paths, leaves, subtree = _tree.leaf_paths(node)
      out.append(
        subtree.unflatten(
          [like_param(p, x) for p, x in zip(paths, leaves, strict=True)]
        )
      )
    else:
      out.append(replicated)
  return treedef.unflatten(out)


def _map_with_path_str(fn: Any, tree: Any) -> Any:
  """``jax.tree.map`` whose function gets the ``"/"``-joined path first."""
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: fn(_tree.path_str(path), leaf), tree
  )


def _shape(leaf: Any) -> tuple[int, ...]:
  return tuple(getattr(leaf, "shape", ()))


def annotate_optimizer_sharding(
  params: Any,
  tx: optax.GradientTransformation,
  mesh: Mesh | None = None,
) -> None:
  """Tells ``flax.nnx.Optimizer`` how to shard NanoAdam's state.

  ``nnx.Optimizer`` gives each optimizer-state leaf the sharding annotation of
  the param it came from (``out_sharding``), and applies it eagerly. That
  suits Adam's param-shaped moments, but a 2-D spec cannot shard NanoAdam's
  1-D ``(k,)`` buffers, so constructing the optimizer fails. Flax reads a
  separate ``optimizer_sharding`` annotation first when it is present; this
  sets it, on every Variable of ``params`` that NanoAdam trains, to the
  sharding :func:`state_shardings` picks for that param's state (the buffers'
  spec for sparse leaves, the param's own for dense ones). Call it before
  ``nnx.Optimizer(model, tx, wrt=...)``, under the same ``jax.set_mesh`` as
  the model.

  ``optimizer_sharding`` is per parameter: another param-shaped state in the
  same chain (e.g. ``optax.MultiSteps``' accumulator) would get the buffers'
  spec too. For such chains, shard the state with :func:`state_shardings`
  and ``jax.jit(..., out_shardings=...)`` instead.

  Args:
    params: the ``nnx.State`` of the Variables the optimizer trains, e.g.
      ``nnx.state(model, nnx.Param)`` (the ``wrt`` filter of the optimizer).
      Their values must be sharded arrays (or carry ``out_sharding``
      annotations); the annotation is set on these Variables in place, so
      it reaches the model's own.
    tx: the optimizer, e.g. ``na.nanoadam(...)``, or any Optax
      transformation that contains NanoAdam.
    mesh: the mesh of the annotations; by default the params' or the one set
      by :func:`jax.set_mesh`.

  Examples:
    >>> import jax
    >>> import optax
    >>> from flax import nnx
    >>> import nanoadam_jax as na
    >>> mesh = jax.make_mesh((1,), ("fsdp",))
    >>> with jax.set_mesh(mesh):
    ...   model = nnx.Linear(
    ...       64, 32, rngs=nnx.Rngs(0),
    ...       kernel_init=nnx.with_partitioning(
    ...           nnx.initializers.lecun_normal(), ("fsdp", None)))
    ...   tx = na.nanoadam(1e-3, density=0.125)
    ...   na.annotate_optimizer_sharding(nnx.state(model, nnx.Param), tx)
    ...   optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> optimizer.opt_state[0].mu["kernel"].get_value().shape
    (256,)
  """
  from flax import nnx  # Flax is needed by this helper only.

  is_variable = lambda x: isinstance(x, nnx.Variable)
  with_path = jax.tree_util.tree_leaves_with_path(params, is_leaf=is_variable)
  for path, leaf in with_path:
    if not is_variable(leaf):
      raise TypeError(
        f"`params` must hold nnx.Variable leaves (e.g. nnx.state(model, "
        f"nnx.Param)), got a {type(leaf).__name__} at "
        f"{_tree.path_str(path)!r}."
      )
  values = jax.tree.map(lambda v: v.get_value(), params, is_leaf=is_variable)
  annotated = nnx.get_partition_spec(params)

  def param_sharding(value: Any, spec_variable: Any) -> Any:
    sharding = getattr(value, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return sharding
    return spec_variable.get_value()

  param_shardings = jax.tree.map(param_sharding, values, annotated)
  abstract = jax.eval_shape(tx.init, values)
  shardings = state_shardings(abstract, param_shardings, mesh)
  specs = {}
  for node in _state.find_states(shardings):
    paths, leaves, _ = _tree.leaf_paths(node.mu)
    for path, sharding in zip(paths, leaves, strict=True):
      specs.setdefault(path, sharding.spec)
  for path, variable in with_path:
    spec = specs.get(_tree.path_str(path))
    if spec is not None:
      variable.set_metadata(optimizer_sharding=spec)
