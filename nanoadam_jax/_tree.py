"""Leaf paths and the sparse/dense routing of a parameter tree."""

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# A regex on the "/"-joined leaf path, or a predicate on (path, leaf).
Exclude = None | str | re.Pattern | Callable[[str, Any], bool]


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


def compile_exclude(exclude: Exclude) -> Callable[[str, Any], bool]:
  """Turns the ``exclude`` argument into a predicate on (path, leaf)."""
  if exclude is None:
    return lambda path, leaf: False
  if isinstance(exclude, str | re.Pattern):
    try:
      pattern = re.compile(exclude)
    except re.error as error:
      raise ValueError(
        f"`exclude` is not a valid regular expression: {error}"
      ) from error
    return lambda path, leaf: pattern.search(path) is not None
  if callable(exclude):
    return lambda path, leaf: bool(exclude(path, leaf))
  raise TypeError(
    "`exclude` must be None, a regex string or a callable(path, leaf) -> "
    f"bool, got {type(exclude).__name__}."
  )


# A product ``fraction * n`` within this many machine epsilons (relative) of
# an integer is that integer: rounding the fraction to binary and the product
# cost at most one epsilon each.
_ROUNDING_EPSILONS = 2


def ceil_count(fraction: Any, n: int) -> Any:
  """``ceil(fraction * n)``, where a product within rounding of an integer
  counts as that integer.

  A fraction as a user writes it is rarely exact in binary: 0.07 * 100 is
  7.000000000000001 in float64 and float32(0.05) * 100 is 5.0000001, and
  neither may add an entry. A product within ``_ROUNDING_EPSILONS`` machine
  epsilons (relative, of the dtype it is computed in) of an integer is taken
  as that integer; any farther, it is rounded up, so that half an entry is an
  entry even among millions (0.5 * 1_000_001 is 500_001).

  Args:
    fraction: a Python or NumPy number (static: the product is computed in
      float64), or a JAX array (traced: computed in its dtype, float32 for a
      density schedule).
    n: the number of entries, a Python int.

  Returns:
    A Python int for a static ``fraction``; for a traced one, an array of
    ``fraction``'s float dtype holding an integer (clip it before converting
    to int32: float32 rounds ``n`` near 2**31 up to 2**31).
  """
  traced = isinstance(fraction, jax.Array)
  xp = jnp if traced else np
  if not traced:
    fraction = np.float64(fraction)
  wanted = fraction * n
  nearest = xp.round(wanted)
  tolerance = _ROUNDING_EPSILONS * float(xp.finfo(wanted.dtype).eps)
  is_rounding = xp.abs(wanted - nearest) <= tolerance * wanted
  count = xp.where(is_rounding, nearest, xp.ceil(wanted))
  return count if traced else int(count)


def buffer_size(density: float, n: int) -> int:
  """``k = max(1, ceil(density * n))`` entries, 0 for an empty tensor.

  ``ceil`` as :func:`ceil_count` rounds: a density written as 0.07 selects 7
  of 100 entries, not 8.
  """
  if n == 0:
    return 0
  return max(1, min(n, ceil_count(density, n)))


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
