"""Checking a checkpoint against the state it is about to be restored into.

A state saved with another ``density`` (or ``exclude``, ``granularity``,
``block_size``, moment dtype) has buffers of other sizes than a fresh
``tx.init`` builds. Restored as usual, into ``jax.eval_shape(tx.init,
params)``, Orbax then fails with a shape error that names no parameter.
:func:`check_checkpoint` compares the checkpoint's metadata with the target
first and says which param, and how, in NanoAdam's terms.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from nanoadam_jax import _state
from nanoadam_jax import _tree

_FIELDS = ("indices", "mu", "nu")


def _stored_tree(stored: Any) -> Any:
  """The tree inside Orbax's metadata objects (``StepMetadata``,
  ``TreeMetadata``), or ``stored`` itself."""
  for attribute in ("item_metadata", "tree"):
    inner = getattr(stored, attribute, None)
    if inner is not None and not callable(inner):
      stored = inner
  return stored


def _by_path(tree: Any) -> dict[str, Any]:
  """Leaves by "/"-joined path, without a Flax NNX Variable's trailing
  ``value``: Orbax's metadata of a saved ``nnx.state`` keeps it as a key,
  where the state itself is matched without it."""
  paths, leaves, _ = _tree.leaf_paths(tree)
  paths = [path.removesuffix("/value") for path in paths]
  return dict(zip(paths, leaves, strict=True))


def _nanoadam_buffers(target: Any) -> dict[str, tuple[str, str]]:
  """Path in ``target`` -> (param path, buffer field) of each NanoAdam
  buffer in it."""
  with_path, _ = jax.tree_util.tree_flatten_with_path(
    target, is_leaf=_state.is_state_like
  )
  owners = {}
  for prefix, node in with_path:
    state = _state.as_state(node)
    if state is None:
      continue
    base = _tree.path_str(prefix)
    for field in _FIELDS:
      for param_path in _by_path(getattr(state, field)):
        full = "/".join(part for part in (base, field, param_path) if part)
        owners[full] = (param_path, field)
  return owners


def check_checkpoint(stored: Any, target: Any) -> None:
  """Raises a ``ValueError`` naming the param when a checkpoint does not fit.

  Compare a checkpoint's metadata with the abstract state it is about to be
  restored into, before restoring, so that a state saved with another
  ``density``, ``exclude``, ``granularity``, ``block_size`` or moment dtype
  fails with a message in NanoAdam's terms instead of Orbax's shape error.

  Args:
    stored: the checkpoint's metadata tree: what
      ``ocp.StandardCheckpointer().metadata(path)`` returns, or one item of
      ``ocp.CheckpointManager.item_metadata(step)``; or any tree of leaves
      with ``shape`` and ``dtype`` saved from the same structure.
    target: the restore target, e.g. ``jax.eval_shape(tx.init, params)``;
      it may be a larger tree that holds the optimizer state.

  Raises:
    ValueError: a leaf is in one and not the other, or differs in shape or
      dtype; for NanoAdam's buffers the message names the param, the sizes
      and the density ratio they imply.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import nanoadam_jax as na
    >>> params = {"w": jnp.zeros(1000)}
    >>> saved = jax.eval_shape(na.nanoadam(1e-3, 0.1).init, params)
    >>> target = jax.eval_shape(na.nanoadam(1e-3, 0.2).init, params)
    >>> na.check_checkpoint(saved, saved)  # fits: nothing happens
    >>> try:
    ...   na.check_checkpoint(saved, target)
    ... except ValueError as error:
    ...   print(error)  # doctest: +ELLIPSIS
    NanoAdam's 'indices' buffer of param 'w' holds 100 entries in the ...
  """
  got = _by_path(_stored_tree(stored))
  want = _by_path(target)
  if want and not got:
    raise ValueError(
      "`stored` holds no array metadata. An ocp.CheckpointManager opened "
      "without item handlers returns None for each item's metadata: open "
      "it with `item_handlers=` (e.g. ocp.StandardCheckpointHandler() per "
      "item) before calling item_metadata(step)."
    )
  owners = _nanoadam_buffers(target)
  for path in sorted(set(got) | set(want)):
    owner = owners.get(path)
    where = (
      f"NanoAdam's {owner[1]!r} buffer of param {owner[0]!r}"
      if owner
      else f"state leaf {path!r}"
    )
    if path not in want or path not in got:
      side = "the checkpoint" if path in got else "the restore target"
      raise ValueError(
        f"{where} is only in {side} ({path!r}): was the checkpoint saved "
        "with another `exclude` (or another optimizer, or other params)?"
      )
    stored_shape = tuple(getattr(got[path], "shape", ()))
    wanted_shape = tuple(getattr(want[path], "shape", ()))
    if stored_shape != wanted_shape:
      message = (
        f"{where} holds {math.prod(stored_shape)} entries in the checkpoint "
        f"{stored_shape} but {math.prod(wanted_shape)} in the restore target "
        f"{wanted_shape}"
      )
      if owner:
        ratio = math.prod(stored_shape) / max(1, math.prod(wanted_shape))
        message += (
          f": the checkpoint was saved with about {ratio:.3g}x this "
          "optimizer's density, or another granularity or block_size. "
          "Build the optimizer with the settings it was saved with"
        )
      raise ValueError(message + ".")
    stored_dtype = getattr(got[path], "dtype", None)
    wanted_dtype = getattr(want[path], "dtype", None)
    if None not in (stored_dtype, wanted_dtype) and jnp.dtype(
      stored_dtype
    ) != jnp.dtype(wanted_dtype):
      hint = (
        " (mu_dtype / nu_dtype?)" if owner and owner[1] != "indices" else ""
      )
      raise ValueError(
        f"{where} is {jnp.dtype(stored_dtype).name} in the checkpoint but "
        f"{jnp.dtype(wanted_dtype).name} in the restore target{hint}."
      )
