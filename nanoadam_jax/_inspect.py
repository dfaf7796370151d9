"""Looking inside a NanoAdam optimizer: which entries train, what state costs.

:func:`selection_mask` answers "which weights does the next update touch?"
from any optimizer state that contains a :class:`ScaleByNanoAdamState`
(inside ``optax.chain``, ``multi_transform``, ``MultiSteps``, an NNX
``Optimizer``...). :func:`describe` prints, per leaf, how a transformation
treats the params and what its state costs against AdamW's.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nanoadam_jax import _layout
from nanoadam_jax import _state
from nanoadam_jax import _tree
from nanoadam_jax._memory import state_bytes


def _sparse_mask(
  indices: jax.Array, shape: tuple[int, ...], block_size: int | None
) -> jax.Array:
  """True at the entries that ``indices`` (one leaf's buffer) selects."""
  n = math.prod(shape)
  where = jnp.asarray(indices).astype(jnp.int32)
  if where.ndim == 2:  # block-local indices, one row per block
    if block_size is None:
      raise ValueError(
        "The state was built with granularity='block'; pass the same "
        "`block_size` to selection_mask."
      )
    row_size = max(1, min(block_size, n))
    if where.shape[0] != math.ceil(n / row_size):
      raise ValueError(
        f"A block state of {where.shape[0]} blocks does not fit {n} entries "
        f"in blocks of {block_size}: is `block_size` the one it was built "
        "with?"
      )
    # Unused slots point past their block; drop them.
    live = _layout.is_used(where, row_size)
    starts = row_size * jnp.arange(where.shape[0], dtype=jnp.int32)[:, None]
    where = jnp.where(live, where + starts, n)
  flat = jnp.zeros(n, bool).at[where.ravel()].set(True, mode="drop")
  return flat.reshape(shape)


def selection_mask(
  opt_state: Any, params: optax.Params, *, block_size: int | None = None
) -> optax.Params:
  """Which entries the next update may change: a bool tree shaped like params.

  True on the entries NanoAdam has selected (only the ``k_t`` active slots
  of a density schedule) and on every entry of a leaf it trains densely
  (``exclude``); False on frozen leaves and, before the first update, on
  every sparse leaf (nothing is selected yet). At a re-selection step the
  next update first re-selects, so the mask is the selection in force now.
  Leaves that no NanoAdam state covers (another branch of a
  ``multi_transform``, say) are False.

  Args:
    opt_state: any optimizer state containing a ``ScaleByNanoAdamState``.
    params: the params the state was built for.
    block_size: the ``block_size`` of a ``granularity="block"`` state
      (block-local indices do not say how long their blocks are).

  Returns:
    A tree with the structure of ``params`` and boolean leaves of their
    shapes. The fraction of weights trained is then one line, e.g.
    ``sum(m.sum() for m in jax.tree.leaves(mask)) / total``.

  Raises:
    ValueError: ``opt_state`` contains no NanoAdam state, or a block state
      without ``block_size``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import nanoadam_jax as na
    >>> params = {"w": jnp.array([0.5, -0.01, 2.0, 0.02]), "b": jnp.ones(2)}
    >>> tx = na.nanoadam(0.1, density=0.5, exclude="b")
    >>> state = tx.init(params)
    >>> _, state = tx.update(params, state, params)
    >>> mask = na.selection_mask(state, params)
    >>> print(mask["w"], mask["b"])
    [False  True False  True] [ True  True]
  """
  states = _state.find_states(opt_state)
  if not states:
    raise ValueError(
      "`opt_state` contains no NanoAdam state (ScaleByNanoAdamState): pass "
      "an optimizer state built by a transformation that contains "
      "na.nanoadam or na.scale_by_nanoadam, an nnx.Optimizer, or "
      "nnx.state(optimizer)."
    )
  paths, leaves, treedef = _tree.leaf_paths(params)
  shapes = {
    path: tuple(jnp.shape(x)) for path, x in zip(paths, leaves, strict=True)
  }
  masks = {path: jnp.zeros(shape, bool) for path, shape in shapes.items()}
  covered: dict[str, int] = {}  # path -> which state trains it
  for number, state in enumerate(states):
    started = jnp.asarray(state.count) > 0
    for path, leaf in _state.buffers_by_path(state).items():
      if path not in shapes:
        known = ", ".join(repr(p) for p in paths[:5])
        raise ValueError(
          f"The optimizer state trains a param at {path!r}, which `params` "
          f"lacks (it has {known}{', ...' if len(paths) > 5 else ''}): pass "
          "the params the state was built for."
        )
      if path in covered:
        raise ValueError(
          f"`opt_state` holds {len(states)} NanoAdam states, and states "
          f"{covered[path]} and {number} (counting from 0) both train "
          f"{path!r}: which selection applies depends on the chain. Pass "
          "one NanoAdam's own state (e.g. opt_state[1] of an optax.chain)."
        )
      covered[path] = number
      if leaf.kind == "sparse":
        chosen = _sparse_mask(leaf.indices, shapes[path], block_size)
        masks[path] = chosen & started
      else:  # trained densely
        masks[path] = jnp.ones(shapes[path], bool)
  return treedef.unflatten([masks[path] for path in paths])


@dataclasses.dataclass(frozen=True)
class LeafReport:
  """How one param leaf is treated, and what its state costs."""

  path: str
  # "sparse", "dense" (AdamW), "frozen", or "other": a float leaf that no
  # NanoAdam state covers (another transformation's, whose state bytes
  # count in the "other state" line).
  kind: str
  entries: int
  selected: int  # buffer slots (k, or blocks * k per block); all if dense
  index_dtype: str  # "-" without an index buffer
  mu_dtype: str
  nu_dtype: str
  state_bytes: int


@dataclasses.dataclass(frozen=True)
class Description:
  """The per-leaf table that :func:`describe` returns; ``print`` it."""

  leaves: tuple[LeafReport, ...]
  state_bytes: int  # the whole optimizer state
  adamw_bytes: int  # optax.adamw's state on the same params

  def __str__(self) -> str:
    header = ("path", "kind", "entries", "k", "index", "mu", "nu", "bytes")
    rows = [header] + [
      (
        leaf.path,
        leaf.kind,
        f"{leaf.entries:,}",
        f"{leaf.selected:,}",
        leaf.index_dtype,
        leaf.mu_dtype,
        leaf.nu_dtype,
        f"{leaf.state_bytes:,}",
      )
      for leaf in self.leaves
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
      "  ".join(
        cell.ljust(w) if i < 2 else cell.rjust(w)
        for i, (cell, w) in enumerate(zip(row, widths, strict=True))
      ).rstrip()
      for row in rows
    ]
    ratio = self.state_bytes / self.adamw_bytes if self.adamw_bytes else 0
    other = self.state_bytes - sum(leaf.state_bytes for leaf in self.leaves)
    lines.append(
      f"other state (step counts, other transformations): {other:,} bytes"
    )
    lines.append(
      f"optimizer state: {self.state_bytes:,} bytes, {ratio:.3f}x "
      f"optax.adamw's {self.adamw_bytes:,}"
    )
    return "\n".join(lines)


def _dtype_name(leaf: Any) -> str:
  return jnp.dtype(leaf.dtype).name if hasattr(leaf, "dtype") else "-"


def describe(
  tx: optax.GradientTransformation, params: optax.Params
) -> Description:
  """A per-leaf table of how ``tx`` trains ``params`` and what it stores.

  Nothing is allocated: the state is traced with ``jax.eval_shape``.

  Args:
    tx: a transformation containing NanoAdam (``na.nanoadam``, a chain...).
    params: the params, or ``jax.ShapeDtypeStruct`` leaves shaped like them.

  Returns:
    A :class:`Description`: ``print`` it for the table; its ``leaves`` hold
    one :class:`LeafReport` per param (path; sparse, dense or frozen;
    entries; selected slots; index and moment dtypes; state bytes), and
    ``state_bytes`` / ``adamw_bytes`` compare the whole state with
    ``optax.adamw``'s.

  Examples:
    >>> import jax.numpy as jnp
    >>> import nanoadam_jax as na
    >>> params = {"w": jnp.zeros((100, 10)), "head": jnp.zeros(10)}
    >>> print(na.describe(na.nanoadam(1e-3, 0.1, exclude="head"), params))
    path  kind    entries    k  index       mu       nu  bytes
    head  dense        10   10      -  float32  float32     80
    w     sparse    1,000  100  int32  float32  float32  1,200
    other state (step counts, other transformations): 4 bytes
    optimizer state: 1,284 bytes, 0.159x optax.adamw's 8,084
  """
  state = jax.eval_shape(tx.init, params)
  states = _state.find_states(state)
  if not states:
    raise ValueError("`tx` contains no NanoAdam transformation.")
  paths, leaves, _ = _tree.leaf_paths(params)
  reports = {}
  for nano_state in states:
    for path, leaf in _state.buffers_by_path(nano_state).items():
      sparse = leaf.kind == "sparse"
      reports[path] = (
        leaf.kind,
        math.prod(leaf.indices.shape if sparse else leaf.mu.shape),
        _dtype_name(leaf.indices) if sparse else "-",
        _dtype_name(leaf.mu),
        _dtype_name(leaf.nu),
        state_bytes((leaf.indices, leaf.mu, leaf.nu)),
      )
  rows = []
  for path, leaf in zip(paths, leaves, strict=True):
    entries = math.prod(jnp.shape(leaf))
    # A float leaf that no NanoAdam state covers is another
    # transformation's (a multi_transform branch) or nobody's.
    trainable = entries > 0 and _tree.is_trainable_dtype(leaf.dtype)
    kind, selected, index, mu, nu, nbytes = reports.get(
      path, ("other" if trainable else "frozen", 0, "-", "-", "-", 0)
    )
    rows.append(
      LeafReport(path, kind, entries, selected, index, mu, nu, nbytes)
    )
  adamw = jax.eval_shape(optax.adamw(1e-3).init, params)
  return Description(tuple(rows), state_bytes(state), state_bytes(adamw))
