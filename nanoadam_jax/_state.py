"""NanoAdam's state: its type, and finding it inside any optimizer state.

Every helper that reads a NanoAdam state (``selection_mask``, ``describe``,
``state_shardings``, ``annotate_optimizer_sharding``, ``check_checkpoint``)
finds it through :func:`find_states` and tells a leaf's kind with
:func:`leaf_kind`, both here.
"""

from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import jax
import optax

from nanoadam_jax import _tree


class ScaleByNanoAdamState(NamedTuple):
  """State of :func:`scale_by_nanoadam`.

  Every field but ``count`` is a tree with the params' structure. For a leaf
  of ``n`` entries trained sparsely with a buffer of ``k`` entries:

  - ``indices``: shape=(k,), dtype=int32. Ascending flat indices of the
    selected entries; with a density schedule only the first ``k_t`` slots
    are in use (the rest are ignored). All zeros before the first update.
  - ``mu``, ``nu``: shape=(k,), the Adam moments of those entries (``mu`` in
    ``mu_dtype``, ``nu`` in ``nu_dtype``; each defaults to the param's).

  With ``granularity="block"`` the buffers are shape=(blocks, k_block):
  per contiguous block of the flattened tensor, block-local indices (int16
  for blocks of at most 32768 entries, else int32) and their moments.

  For a leaf trained densely (matched by ``exclude``): ``indices`` is an
  empty ``optax.MaskedNode`` and ``mu``, ``nu`` have the param's shape. A
  frozen leaf (non-float and excluded) and an empty tensor hold a
  ``MaskedNode`` in all three fields: zero-size arrays would break
  checkpointing (orbax refuses them).
  """

  count: jax.Array  # shape=(), dtype=jnp.int32; updates applied so far
  indices: optax.Updates
  mu: optax.Updates
  nu: optax.Updates


def assemble(
  count: jax.Array, treedef: Any, buffers: list[tuple[Any, Any, Any]]
) -> ScaleByNanoAdamState:
  """The state from per-leaf (indices, mu, nu) triples in the params' order."""
  return ScaleByNanoAdamState(
    count=count,
    indices=treedef.unflatten([indices for indices, _, _ in buffers]),
    mu=treedef.unflatten([mu for _, mu, _ in buffers]),
    nu=treedef.unflatten([nu for _, _, nu in buffers]),
  )


def check_is_state(state: Any, built_by: str) -> None:
  """Raises a ``TypeError`` unless ``state`` is a NanoAdam state.

  A state from another optimizer's ``init`` (``optax.adamw``'s, say) would
  otherwise fail deep inside the update, as an unpacking or attribute error.
  """
  if not isinstance(state, ScaleByNanoAdamState):
    raise TypeError(
      f"{built_by}'s update got a state of type {type(state).__name__}, "
      "not the ScaleByNanoAdamState its init returns: was the state built "
      "by another optimizer's init (optax.adamw's, say)? Build it with this "
      "transformation's tx.init(params)."
    )


def is_state(node: Any) -> bool:
  return isinstance(node, ScaleByNanoAdamState)


def _from_mapping(node: Any) -> ScaleByNanoAdamState | None:
  """The state that a mapping of its four fields stands for, else None.

  ``nnx.state(optimizer)`` keeps the optimizer state's values but turns each
  ``NamedTuple`` into a mapping of its field names (and wraps each array in
  a Variable, which flattening sees through).
  """
  fields = ScaleByNanoAdamState._fields
  if not isinstance(node, Mapping) or set(node.keys()) != set(fields):
    return None
  count = jax.tree.leaves(node["count"])
  if len(count) != 1:
    return None
  return ScaleByNanoAdamState(
    count=count[0], indices=node["indices"], mu=node["mu"], nu=node["nu"]
  )


def find_states(opt_state: Any) -> list[ScaleByNanoAdamState]:
  """Every NanoAdam state inside ``opt_state``, in order.

  ``opt_state`` may be any optimizer state (``optax.chain``,
  ``multi_transform``, ``inject_hyperparams``, ``MultiSteps``...), an
  ``nnx.Optimizer`` (or its ``opt_state``), or what ``nnx.state`` returns
  for one.
  """
  nodes = jax.tree.leaves(opt_state, is_leaf=is_state_like)
  return [as_state(node) for node in nodes if is_state_like(node)]


def as_state(node: Any) -> ScaleByNanoAdamState | None:
  """``node`` as a state: itself, the state a mapping of its four fields
  stands for (see :func:`_from_mapping`), or None."""
  return node if is_state(node) else _from_mapping(node)


def is_state_like(node: Any) -> bool:
  """Whether ``node`` is a NanoAdam state or the mapping ``nnx.state``
  makes of one."""
  return as_state(node) is not None


class LeafBuffers(NamedTuple):
  """One param's buffers in a NanoAdam state, and what they make it."""

  kind: str  # "sparse" (indices, mu, nu) or "dense" (mu, nu, like the param)
  indices: Any  # None for a dense leaf
  mu: Any
  nu: Any


def buffers_by_path(state: ScaleByNanoAdamState) -> dict[str, LeafBuffers]:
  """The buffers of every param ``state`` trains, by "/"-joined path.

  A frozen leaf keeps no buffer, so it is absent, as is every param that
  this state does not cover (another branch of a ``multi_transform``).
  """
  indices, mus, nus = (
    dict(zip(*_tree.leaf_paths(tree)[:2], strict=True))
    for tree in (state.indices, state.mu, state.nu)
  )
  return {
    path: LeafBuffers(
      "sparse" if path in indices else "dense",
      indices.get(path),
      mu,
      nus[path],
    )
    for path, mu in mus.items()
  }
