"""Leaf paths and the sparse/dense routing of a parameter tree."""

import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nanoadam_jax import _checks

# A regex on the "/"-joined leaf path, a predicate on (path, leaf), a tree
# of bools shaped like the params (or a prefix of them), or a callable on the
# params that returns such a tree.
Exclude = None | str | re.Pattern | Callable[..., Any] | Any
# Which leaves get weight decay, as optax.adamw's ``mask``: None (all), a
# tree of bools shaped like the params (or a prefix), or a callable on the
# params that returns one.
Mask = None | Callable[[Any], Any] | Any
# What ``compile_exclude`` and ``compile_mask`` return: given the params, a
# predicate on one leaf's (path, leaf).
LeafRule = Callable[[Any], Callable[[str, Any], bool]]


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: tuple[Any, ...]) -> str:
  """Joins a key path with "/", e.g. ``("encoder", "0", "kernel")``.

  A trailing ``.value`` attribute is dropped: Flax NNX hands ``init`` a tree of
  ``Variable`` objects (whose array sits under ``.value``) but ``update`` a tree
  of plain arrays, and both must give the same path.
  """
  names = [_key_name(key) for key in path]
  if (
    path
    and isinstance(path[-1], jax.tree_util.GetAttrKey)
    and (names[-1] == "value")
  ):
    names = names[:-1]
  return "/".join(names)


def leaf_paths(tree: Any) -> tuple[list[str], list[Any], Any]:
  """Returns the "/"-joined paths, the leaves and the treedef of ``tree``."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [path_str(path) for path, _ in with_path]
  leaves = [leaf for _, leaf in with_path]
  return paths, leaves, treedef


def takes_params(fn: Callable[..., Any], name: str = "exclude") -> bool:
  """Whether a callable ``exclude`` is ``fn(params)`` (one required
  positional parameter) rather than ``fn(path, leaf)`` (two).

  Raises:
    TypeError: ``fn`` requires another number of positional arguments, or
      keyword-only ones; the message names the argument ``name``.
  """
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):  # some builtins: assume (path, leaf)
    return False
  positional = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
  )
  parameters = signature.parameters.values()
  required = [
    p for p in parameters if p.kind in positional and p.default is p.empty
  ]
  takes_any = any(
    p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
  )
  keyword_only = [
    p.name
    for p in parameters
    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
  ]
  if keyword_only or (len(required) > 2 or not (required or takes_any)):
    raise TypeError(
      f"`{name}` must be a callable (path, leaf) -> bool or params -> tree "
      f"of bools, but {getattr(fn, '__name__', fn)!r} requires "
      f"{len(required)} positional argument(s)"
      + (f" and keyword-only {keyword_only}" if keyword_only else "")
      + "."
    )
  return len(required) == 1


def _flags_by_path(name: str, tree: Any) -> dict[str, bool]:
  """The bools of a tree shaped like the params, by "/"-joined path."""
  with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
  flags = {}
  for path, value in with_path:
    concrete = isinstance(value, bool | np.bool_) or (
      isinstance(value, jax.Array)
      and not isinstance(value, jax.core.Tracer)
      and value.shape == ()
      and value.dtype == jnp.bool_
    )
    if not concrete:
      raise TypeError(
        f"`{name}` must hold Python bools (decided from paths, shapes or "
        f"dtypes, not values), got {type(value).__name__} at "
        f"{path_str(path)!r}."
      )
    flags[path_str(path)] = bool(value)
  return flags


def _tree_rule(name: str, spec: Any, calls_params: bool) -> LeafRule:
  """A rule from a bool tree, or from a callable on the params that
  returns one. A param takes the flag of the deepest entry whose path is a
  prefix of its own (a prefix tree flags whole subtrees, as Optax's masks
  do); the paths drop a Flax NNX Variable's ``value``, so a tree mapped over
  ``nnx.state`` matches the plain arrays ``update`` sees."""

  fixed = None if calls_params else _flags_by_path(name, spec)  # check now

  def resolve(params: Any) -> Callable[[str, Any], bool]:
    flags = fixed if fixed is not None else _flags_by_path(name, spec(params))

    def flag(path: str, leaf: Any) -> bool:
      del leaf
      probe = path
      while probe not in flags:
        if not probe:
          known = ", ".join(repr(p) for p in list(flags)[:4])
          raise ValueError(
            f"`{name}` has no entry for parameter {path!r} (its entries: "
            f"{known or 'none'}); give a tree shaped like the params."
          )
        probe = probe.rpartition("/")[0]
      return flags[probe]

    return flag

  return resolve


def _reject_injected(name: str, value: Any) -> None:
  """A bool or an array in place of a rule is what inject_hyperparams makes
  of a callable it called as a schedule."""
  if isinstance(value, bool | np.bool_ | jax.Array | np.ndarray | int | float):
    raise TypeError(
      f"`{name}` got a {type(value).__name__} ({value!r}), not a tree of "
      f"bools, a callable or a regex.{_checks.static_args_hint(name)}"
    )


def compile_exclude(exclude: Exclude) -> LeafRule:
  """Turns the ``exclude`` argument into a rule: params -> predicate on
  (path, leaf), True for the leaves trained by dense AdamW.

  Raises:
    ValueError: a regex that does not compile.
    TypeError: a bool or an array (what ``optax.inject_hyperparams`` makes
      of a callable not listed in ``static_args``).
  """
  if exclude is None:
    return lambda params: lambda path, leaf: False
  if isinstance(exclude, str | re.Pattern):
    try:
      pattern = re.compile(exclude)
    except re.error as error:
      raise ValueError(
        f"`exclude` is not a valid regular expression: {error}"
      ) from error
    return lambda params: lambda path, leaf: pattern.search(path) is not None
  _reject_injected("exclude", exclude)
  if callable(exclude):
    if takes_params(exclude):
      return _tree_rule("exclude", exclude, calls_params=True)
    return lambda params: lambda path, leaf: bool(exclude(path, leaf))
  return _tree_rule("exclude", exclude, calls_params=False)


def compile_mask(mask: Mask) -> LeafRule:
  """Turns the weight-decay ``mask`` into a rule: params -> predicate on
  (path, leaf), True for the leaves that get weight decay (all with None).

  Raises:
    TypeError: a bool or an array in place of a tree or a callable.
  """
  if mask is None:
    return lambda params: lambda path, leaf: True
  _reject_injected("mask", mask)
  return _tree_rule("mask", mask, calls_params=callable(mask))


def warn_if_unmatched(exclude: Exclude, paths: list[str]) -> None:
  """Warns when a regex ``exclude`` matches no path: a typo such as
  ``"haed"`` would silently train the head sparsely."""
  if not isinstance(exclude, str | re.Pattern) or not paths:
    return
  pattern = re.compile(exclude)
  if not any(pattern.search(path) for path in paths):
    examples = ", ".join(repr(path) for path in paths[:4])
    warnings.warn(
      f"`exclude` {pattern.pattern!r} matches no parameter path, so every "
      f"leaf is trained sparsely; the paths are like {examples}.",
      UserWarning,
      stacklevel=3,
    )


def as_array(leaf: Any) -> Any:
  """A NumPy array or a Python number as a JAX array; anything else as is.

  Optax accepts both as params and gradients. A Python number becomes a 0-d
  array of JAX's default dtype for its kind (``1.5``: float32, or float64
  with ``jax_enable_x64``), not a weakly typed one. JAX arrays, tracers and
  ``jax.ShapeDtypeStruct`` leaves pass through.
  """
  if isinstance(leaf, bool | int | float | complex):
    return jnp.asarray(
      leaf, jax.dtypes.canonicalize_dtype(np.result_type(type(leaf)))
    )
  if isinstance(leaf, np.ndarray | np.generic):
    return jnp.asarray(leaf)
  return leaf


def is_trainable_dtype(dtype: Any) -> bool:
  return jnp.issubdtype(dtype, jnp.floating)


def route_leaves(
  params: Any, is_excluded: Callable[[str, Any], bool]
) -> tuple[list[str], list[Any], Any, list[bool]]:
  """Decides, per leaf, whether it is trained sparsely.

  Returns the paths, the leaves (NumPy arrays and Python numbers made JAX
  arrays, see :func:`as_array`), the treedef, and a list of booleans (True:
  sparse).

  Raises:
    TypeError: a leaf is not an array, or is not excluded and has an integer
      or boolean dtype.
  """
  paths, leaves, treedef = leaf_paths(params)
  leaves = [as_array(leaf) for leaf in leaves]
  sparse = []
  for path, leaf in zip(paths, leaves, strict=True):
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
      raise TypeError(
        f"Parameter {path!r} is a {type(leaf).__name__}, not an array."
      )
    if is_excluded(path, leaf):
      sparse.append(False)
      continue
    if not is_trainable_dtype(leaf.dtype):
      raise TypeError(
        f"Parameter {path!r} has dtype {jnp.dtype(leaf.dtype).name}; "
        "NanoAdam trains floating-point leaves only. Exclude it with "
        "`exclude=` (excluded non-float leaves get zero updates)."
      )
    sparse.append(True)
  return paths, leaves, treedef, sparse
