"""One traced program for many leaves that share a layout.

A transformer repeats a handful of tensor shapes across its layers. Tracing
the same re-selection once per leaf makes XLA compile it once per leaf:
XLA:CPU shares a compiled kernel between identical fusions, but not between
fusions that reduce or scatter (each carries its own reduction computation),
and its passes slow down faster than the program grows. Here the leaves of
one layout run through one ``lax.scan`` body instead, compiled once and run
leaf after leaf.

Each leaf's large input (its scores, of the tensor's size) is computed in a
``lax.switch`` branch inside the body, so only one exists at a time; only the
small per-leaf buffers are stacked. Unstacking them at constant offsets would
compile one slicing kernel per leaf (each fusion bakes in its offset), so the
offsets are values XLA cannot fold (``_unfolded``), and every leaf's slices
share one kernel.

:func:`selection_groups` and :func:`reselect_group` apply this to the sparse
leaves' re-selection. Per-tensor leaves group by size class: sizes within a
factor 4 share a program, the smaller ones padded with +inf scores (never
selected) and buffers of the group's largest ``k``. A MiniLM's 75 sparse
leaves form 3 groups instead of 75 programs (or 7 exact layouts); the
smaller leaves then re-select on the padded size. Leaves in blocks all
share one program whatever their number of blocks: their rows are cut into
chunks of equal rows, scanned (``_reselect_blocks``), so the paper's recipe
compiles one selection program for the whole model.

:func:`step_groups` and :func:`step_group` do the same for the steady Adam
step of leaves whose moments are rounded stochastically: each leaf gathers
its selected entries, and the Adam arithmetic and rounding hash run once on
their concatenated selected entries. :func:`write_groups` and
:func:`write_group` then write the updates of small leaves of one param
dtype through one scatter per group.
"""

import functools
import itertools
from collections.abc import Callable
from collections.abc import Hashable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nanoadam_jax import _adam
from nanoadam_jax import _layout
from nanoadam_jax import _mesh
from nanoadam_jax import _rounding
from nanoadam_jax import _sparse_leaf
from nanoadam_jax import _unfolded
from nanoadam_jax import _zeros

# Leaves per tensor with more entries re-select alone, and the leaves of one
# step group (or write group) add up to at most this many. A group stacks or
# concatenates its buffers, and for large leaves that transient raises the
# peak memory of a training step (eight 4M-entry matrices: 0.58x of AdamW's
# peak alone, 0.72x grouped; a MiniLM with the paper's recipe: 548 MiB with
# no step groups, 559 MiB in one group, 547 MiB in groups of at most this
# many; measured).
_GROUP_MAX_N = 1 << 20
# Leaves with more entries (rows and markers' room included) write their
# updates alone, not in a write group (see `write_groups`).
_WRITE_LEAF_MAX_N = 1 << 18
# Leaves in blocks re-select in chunks of rows of at most this many entries
# (see `_reselect_blocks`): a chunk's scores are its transient.
_CHUNK_N = _GROUP_MAX_N


def group_by(items: Sequence[Any], key: Callable[[Any], Hashable]):
  """``items`` grouped by ``key``, in order of first appearance."""
  groups: dict[Hashable, list[Any]] = {}
  for item in items:
    groups.setdefault(key(item), []).append(item)
  return list(groups.values())


def size_classes(sizes: Sequence[int], ratio: int = 4) -> list[list[int]]:
  """Positions of ``sizes`` grouped so that each group's largest is at most
  ``ratio`` times its smallest: greedily, from the largest size down."""
  order = sorted(range(len(sizes)), key=lambda j: -sizes[j])
  classes: list[list[int]] = []
  for j in order:
    if classes and sizes[j] * ratio >= sizes[classes[-1][0]]:
      classes[-1].append(j)
    else:
      classes.append([j])
  return [sorted(members) for members in classes]


def map_leaves(
  fn: Callable[[jax.Array, Any], Any],
  inputs: Sequence[Callable[[], jax.Array]],
  carried: Sequence[Any],
) -> list[Any]:
  """``[fn(inputs[j](), carried[j]) for j]``, with ``fn`` traced once.

  Args:
    fn: ``fn(x, c)`` returns a pytree with the structure, shapes and dtypes
      of ``c``.
    inputs: one zero-argument function per leaf, each returning that leaf's
      large input; all return the same shape and dtype.
    carried: one pytree of arrays per leaf, all of the same structure,
      shapes and dtypes.

  Returns:
    One output pytree per leaf. A single leaf calls ``fn`` directly.
  """
  if len(inputs) == 1:
    return [fn(inputs[0](), carried[0])]
  count = len(inputs)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *carried)

  def body(_, leaf):
    j, c = leaf
    return None, fn(lax.switch(j, inputs), c)

  leaves = jnp.arange(count, dtype=jnp.int32)
  _, out = lax.scan(body, None, (leaves, stacked))
  flat, treedef = jax.tree.flatten(out)
  return [
    treedef.unflatten([x[0] for x in row])
    for row in _unfolded.unfolded_slices(flat, range(count), 1)
  ]


def _stands_alone(leaf: _sparse_leaf.SparseLeaf, param: jax.Array) -> bool:
  """Whether ``leaf`` re-selects and steps by itself, in no group."""
  # Explicit shardings may differ per leaf.
  return _mesh.explicit_spec(param) is not None


def _groups_of(leaves, params, kind) -> list[list[int]]:
  """Positions of ``leaves`` grouped by ``kind(j)``; with more than one
  device, or standing alone, each leaf is its own group.

  A group stacks or concatenates its leaves' buffers, which gives them one
  sharding, and under automatic sharding XLA would then move them and hand
  them back sharded alike.
  """
  if jax.device_count() > 1:
    return [[j] for j in range(len(leaves))]
  return group_by(
    range(len(leaves)),
    lambda j: ("alone", j) if _stands_alone(leaves[j], params[j]) else kind(j),
  )


def selection_groups(
  leaves: Sequence[_sparse_leaf.SparseLeaf],
  params: Sequence[jax.Array],
  buffers: Sequence[_sparse_leaf.Buffers],
) -> list[list[int]]:
  """Positions of ``leaves`` grouped to re-select together."""

  def kind(j):
    leaf = leaves[j]
    # Scores have the param's dtype (or float32), buffers their own.
    dtypes = (leaf.dtype, *(b.dtype for b in buffers[j]))
    if leaf.layout.blockwise:  # any number of blocks: in chunks of rows
      return ("blocks", dtypes)
    if leaf.layout.n > _GROUP_MAX_N:  # too large to stack
      return ("alone", j)
    return ("tensor", dtypes)  # by size class

  groups = []
  for same_kind in _groups_of(leaves, params, kind):
    if len(same_kind) == 1 or leaves[same_kind[0]].layout.blockwise:
      groups.append(same_kind)
      continue
    sizes = [leaves[j].layout.n for j in same_kind]
    for members in size_classes(sizes):
      groups.append([same_kind[m] for m in members])
  return groups


def step_groups(
  leaves: Sequence[_sparse_leaf.SparseLeaf],
  params: Sequence[jax.Array],
  buffers: Sequence[_sparse_leaf.Buffers],
) -> list[list[int]]:
  """Positions of ``leaves`` grouped to run one Adam program
  (:func:`step_group`): leaves of one config (weight decay or not), param
  dtype and moment dtypes, per tensor or in blocks of one buffer width.

  Only leaves whose moments are rounded stochastically group. The rounding
  hash makes each leaf's Adam program long, and a group compiles it once
  (a MiniLM train step with the paper's recipe: 9.8-10.1x AdamW's compile
  time before, 7.9-8.3x after, in alternating runs). Plain Adam programs
  are short and leaves of one shape share them already: grouping them
  changed nothing (3.4x before and after with 32-bit moments) but added its
  buffers to the peak.
  """

  def kind(j):
    leaf, (_, mu, nu) = leaves[j], buffers[j]
    if not leaf.rounds_stochastically(mu.dtype, nu.dtype):
      return ("alone", j)
    blocks = leaf.layout.k if leaf.layout.blockwise else None
    return (id(leaf.config), leaf.dtype, mu.dtype, nu.dtype, blocks)

  groups = []
  for same_kind in _groups_of(leaves, params, kind):
    size = lambda j: leaves[j].layout.n
    groups.extend(_up_to(same_kind, size, _GROUP_MAX_N))
  return groups


def _up_to(members, size, limit) -> list[list[int]]:
  """``members`` cut, in order, into runs whose ``size`` adds up to at most
  ``limit`` (a member over it alone)."""
  runs, total = [], 0
  for j in members:
    if runs and total + size(j) <= limit:
      runs[-1].append(j)
      total += size(j)
    else:
      runs.append([j])
      total = size(j)
  return runs


def step_group(
  leaves: Sequence[_sparse_leaf.SparseLeaf],
  grads: Sequence[jax.Array],
  params: Sequence[jax.Array],
  buffers: Sequence[_sparse_leaf.Buffers],
  step: jax.Array,
  step_size: jax.Array | None,
) -> list[_sparse_leaf.Stepped]:
  """:meth:`SparseLeaf.stepped` of each leaf, with one Adam program for all.

  Each leaf gathers its selected entries; the selected gradients, moments
  and rounding keys of all of them are concatenated (buffer-sized:
  ``density`` of the leaves) and go through :meth:`SparseLeaf.adam` once,
  and each leaf gets its part back, to write (:func:`write_group`). Per
  tensor, every entry carries its own leaf's key and its position in its
  own buffer, so each leaf draws the rounding numbers it would draw alone;
  each block's key is hashed from its leaf's key and its row, for all the
  leaves' rows at once.
  """
  if len(leaves) == 1:
    return [leaves[0].stepped(grads[0], params[0], buffers[0], step, step_size)]
  first = leaves[0]
  blockwise = first.layout.blockwise
  gathered = [
    leaf.gather(grad, param, leaf_buffers, step)
    for leaf, grad, param, leaf_buffers in zip(
      leaves, grads, params, buffers, strict=True
    )
  ]
  # Slots per tensor, or blocks: the concatenated axis.
  sizes = [leaf_buffers[1].shape[0] for leaf_buffers in buffers]
  keys = [
    leaf.moment_keys(step, leaf_buffers)
    for leaf, leaf_buffers in zip(leaves, buffers, strict=True)
  ]
  packed_keys, positions = [], None
  for moment in (0, 1):
    moment_keys = [leaf_keys[moment] for leaf_keys in keys]
    if moment_keys[0] is None:
      packed_keys.append(None)
    elif blockwise:  # every leaf's rows hashed at once
      packed_keys.append(_rounding.row_keys(moment_keys, sizes))
    else:  # each entry its leaf's key and its slot in its leaf's buffer
      spread, positions = _rounding.spread_keys(moment_keys, sizes)
      packed_keys.append(spread)
  selected_params = None
  if gathered[0].param is not None:
    selected_params = jnp.concatenate([g.param for g in gathered])
  direction, mu, nu = first.adam(
    jnp.concatenate([g.grad for g in gathered]),
    jnp.concatenate([leaf_buffers[1] for leaf_buffers in buffers]),
    jnp.concatenate([leaf_buffers[2] for leaf_buffers in buffers]),
    selected_params,
    step,
    tuple(packed_keys),
    positions,
  )
  values = _adam.scaled(direction, step_size, first.dtype)
  # Each leaf's part at a runtime offset: at constant offsets every leaf's
  # slices were kernels of their own (three per leaf).
  starts = [0, *itertools.accumulate(sizes)][:-1]
  parts = _unfolded.unfolded_slices((values, mu, nu), starts, sizes)
  return [
    _sparse_leaf.Stepped(g, leaf_values, tuple(leaf_moments))
    for g, (leaf_values, *leaf_moments) in zip(gathered, parts, strict=True)
  ]


def write_groups(
  leaves: Sequence[_sparse_leaf.SparseLeaf],
  params: Sequence[jax.Array],
  gathered: Sequence[_sparse_leaf.Gathered],
) -> list[list[int]]:
  """Positions of ``leaves`` grouped to write their updates through one
  scatter (:func:`write_group`): leaves of one param dtype whose steps
  address flat positions, each of at most ``_WRITE_LEAF_MAX_N`` positions,
  in runs of at most ``_GROUP_MAX_N``.

  A group writes once every member's gradient has been read, and XLA then
  keeps more of the gradients or params alive than it does leaf by leaf:
  one group for all eight 4M-entry matrices of a 128 MiB MLP raised its
  training step's peak from 0.535x AdamW's to 0.80x, and groups of up to
  2**22 entries a MiniLM's with the paper's recipe from 547 to 553 MiB.
  Grouping only leaves of up to 2**18 entries (a MiniLM's vectors and
  attention matrices: 62 of its 75 sparse leaves, in 4 groups), neither
  peak moved (measured).
  """

  def size(j):
    return leaves[j].layout.rows * gathered[j].width

  def kind(j):
    if gathered[j].where is None or size(j) > _WRITE_LEAF_MAX_N:
      return ("alone", j)
    return ("flat", leaves[j].dtype)

  groups = []
  for same_kind in _groups_of(leaves, params, kind):
    groups.extend(_up_to(same_kind, size, _GROUP_MAX_N))
  return groups


def write_group(
  leaves: Sequence[_sparse_leaf.SparseLeaf],
  stepped: Sequence[_sparse_leaf.Stepped],
  buffers: Sequence[_sparse_leaf.Buffers],
  params: Sequence[jax.Array],
  step_size: jax.Array | None,
) -> list[tuple[jax.Array, _sparse_leaf.Buffers]]:
  """:meth:`SparseLeaf.write` of each leaf, through one scatter for all.

  XLA:CPU compiles a kernel per scatter (each carries its own combiner), so
  a scatter per leaf is a kernel per leaf. Here the leaves' widened rows
  lie end to end in one buffer that one scatter writes, cut back into
  leaves at offsets XLA cannot fold (``_unfolded``), so that the slices of
  leaves of one shape share a kernel.
  """
  if len(leaves) == 1:  # its own rows: no slicing
    return [leaves[0].write(*stepped[0], buffers[0], params[0], step_size)]
  widths = [s.gathered.width for s in stepped]
  spans = [leaf.layout.rows * w for leaf, w in zip(leaves, widths, strict=True)]
  starts = [0, *itertools.accumulate(spans)][:-1]
  offsets = _unfolded.unfolded_ints(starts, jnp.uint32)
  # Each leaf's positions wait for its gradient, the buffer for all of
  # them (see `_zeros.zeros_after`): computed from the state alone, they
  # would be computed at the start of a training step and kept to its end.
  where = []
  for s, start in zip(stepped, offsets, strict=True):
    anchor = _zeros.zero_after(s.gathered.grad[..., :1]).astype(jnp.uint32)
    where.append((s.gathered.where + start + anchor).reshape(-1))
  where = jnp.concatenate(where)
  values = jnp.concatenate([s.values.reshape(-1) for s in stepped])
  after = values[:1]
  dense = (
    _zeros.zeros_after(
      after, (sum(spans),), values.dtype, _zeros.zero_sign(step_size)
    )
    .at[where]
    .set(
      values,
      indices_are_sorted=True,
      unique_indices=True,
      mode="promise_in_bounds",
    )
  )
  parts = _unfolded.unfolded_slices((dense,), starts, spans)
  out = []
  for leaf, s, width, (part,), leaf_buffers, param in zip(
    leaves, stepped, widths, parts, buffers, params, strict=True
  ):
    layout = leaf.layout
    rows = part.reshape(layout.rows, width)[:, : layout.row_size]
    out.append(
      leaf.finish(
        s.gathered,
        rows.reshape(layout.rows_shape),
        s.moments,
        leaf_buffers,
        param,
      )
    )
  return out


def reselect_group(
  leaves: Sequence[_sparse_leaf.SparseLeaf],
  params: Sequence[jax.Array],
  step: jax.Array,
  buffers: Sequence[_sparse_leaf.Buffers],
) -> list[_sparse_leaf.Buffers]:
  """:meth:`SparseLeaf.reselect` of each leaf, in one traced program.

  The leaves (one group of :func:`selection_groups`) re-select through the
  largest of them: each pads its scores and buffers to the largest's layout
  (:meth:`SparseLeaf.to_group_rows`), the largest re-selects those rows
  with the padded leaf's own active counts, and each takes its part back
  (:meth:`SparseLeaf.from_group_rows`). Leaves in blocks do the same in
  chunks of rows (:func:`_reselect_blocks`).
  """
  if len(leaves) > 1 and leaves[0].layout.blockwise:
    return _reselect_blocks(leaves, params, step, buffers)
  largest = max(leaves, key=lambda leaf: leaf.layout.n)
  group = largest.layout

  def padded_scores(leaf, param):
    return leaf.to_group_rows(group, scores=leaf.scores(param, step))

  def reselect(scores, carried):
    old, active = carried
    return largest.reselect_rows(scores, step, old, active), active

  out = map_leaves(
    reselect,
    [
      functools.partial(padded_scores, leaf, param)
      for leaf, param in zip(leaves, params, strict=True)
    ],
    [
      (leaf.to_group_rows(group, buffers=old), leaf.active_count_change(step))
      for leaf, old in zip(leaves, buffers, strict=True)
    ],
  )
  return [
    leaf.from_group_rows(group, chosen, new_active)
    for leaf, (chosen, (new_active, _)) in zip(leaves, out, strict=True)
  ]


def _reselect_blocks(
  leaves: Sequence[_sparse_leaf.SparseLeaf],
  params: Sequence[jax.Array],
  step: jax.Array,
  buffers: Sequence[_sparse_leaf.Buffers],
) -> list[_sparse_leaf.Buffers]:
  """:meth:`SparseLeaf.reselect` of leaves in blocks, every block of every
  leaf through one selection program.

  The leaves' blocks, in order, are cut into chunks of equal rows (at most
  ``_CHUNK_N`` entries), which a ``lax.scan`` re-selects one after the
  other. Each chunk's scores and old buffers are built in a ``lax.switch``
  branch from the leaves it covers, so only one chunk's scores exist at a
  time. A leaf in one short block is padded to the widest block (see
  :meth:`SparseLeaf.to_group_rows`); every row keeps its own leaf's active
  counts, and the last chunk is padded with rows of +inf scores, whose
  results are dropped.
  """
  widest = max(leaves, key=lambda leaf: leaf.layout.row_size)
  group = widest.layout
  rows = [leaf.layout.rows for leaf in leaves]
  starts = [0, *itertools.accumulate(rows)][:-1]
  total = sum(rows)
  chunk = min(total, max(1, _CHUNK_N // group.row_size))
  count = -(-total // chunk)
  # Counts differ by row where a leaf is padded or a schedule reads them.
  padded = any(leaf.layout.k != group.k for leaf in leaves)
  per_row = padded or widest.config.density_schedule is not None

  def chunk_inputs(c):
    lo, hi = c * chunk, min((c + 1) * chunk, total)
    scores, old, active = [], [], []
    for leaf, param, leaf_buffers, start, size in zip(
      leaves, params, buffers, starts, rows, strict=True
    ):
      a, b = max(lo, start) - start, min(hi, start + size) - start
      if a >= b:
        continue
      # Rows of the group's width and k: (rows, row_size) and (rows, k).
      leaf_scores = leaf.to_group_rows(group, scores=leaf.scores(param, step))
      scores.append(leaf_scores[a:b])
      leaf_old = leaf.to_group_rows(group, buffers=leaf_buffers)
      old.append(tuple(x[a:b] for x in leaf_old))
      counts = leaf.active_count_change(step)
      active.append(tuple(jnp.broadcast_to(n, (b - a,)) for n in counts))
    if hi - lo < chunk:  # padding rows: never selected, remapped from nothing
      short = chunk - (hi - lo)
      scores.append(jnp.full((short, group.row_size), jnp.inf, scores[0].dtype))
      slots = jnp.arange(group.k, dtype=jnp.int32)
      unused = _layout.unused_marker(group.row_size, slots)
      old.append(
        (jnp.broadcast_to(unused.astype(old[0][0].dtype), (short, group.k)),)
        + tuple(jnp.zeros((short, group.k), x.dtype) for x in old[0][1:])
      )
      active.append((jnp.ones((short,), jnp.int32),) * 2)
    joined = lambda parts: tuple(map(jnp.concatenate, zip(*parts, strict=True)))
    return jnp.concatenate(scores), joined(old), joined(active)

  def reselect(scores, old, active):
    return widest.reselect_rows(scores, step, old, active if per_row else None)

  if count == 1:
    out = reselect(*chunk_inputs(0))
  else:
    branches = [functools.partial(chunk_inputs, c) for c in range(count)]

    def body(_, c):
      return None, reselect(*lax.switch(c, branches))

    _, out = lax.scan(body, None, jnp.arange(count, dtype=jnp.int32))
    out = tuple(x.reshape(count * chunk, group.k) for x in out)
  parts = _unfolded.unfolded_slices(out, starts, rows)
  return [
    leaf.from_group_rows(group, part, leaf.active_count_change(step)[0])
    for leaf, part in zip(leaves, parts, strict=True)
  ]
