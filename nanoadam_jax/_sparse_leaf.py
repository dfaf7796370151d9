"""One sparse leaf: its selection and its Adam step.

A leaf that NanoAdam trains sparsely keeps three fixed-size buffers: the
indices of its selected entries and their two Adam moments. Two operations
change them, in this order within an update:

1. :meth:`SparseLeaf.reselect`, every ``mask_interval`` steps (and whenever
   the density schedule is re-read): the ``k_t`` entries with the lowest
   scores (``|theta|`` for the method) become the selection, and the moments
   are remapped (an entry kept keeps its moments, a new one starts at zero)
   or reset.
2. :meth:`SparseLeaf.step`, every step: Adam on the selected entries, written
   into a dense update that is exactly zero everywhere else.

:class:`SparseLeaf` adds to the transformation's :class:`LeafConfig` one
leaf's static facts (its layout, shape, dtype and place): Python values fixed
at trace time. It offers the interface every kind of leaf offers (see
``_leaves``): ``init``, ``expected_buffers`` and ``step``.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nanoadam_jax import _adam
from nanoadam_jax import _config
from nanoadam_jax import _layout
from nanoadam_jax import _leaf
from nanoadam_jax import _mesh
from nanoadam_jax import _rounding
from nanoadam_jax import _selection
from nanoadam_jax import _zeros

# A sparse leaf's state: (indices, mu, nu), each of the layout's
# ``buffer_shape``: (k,), or (rows, k) for blocks.
Buffers = tuple[jax.Array, jax.Array, jax.Array]


class Gathered(NamedTuple):
  """What one step of a sparse leaf reads (see :meth:`SparseLeaf.gather`)."""

  grad: jax.Array  # the selected gradient, of the buffers' shape
  param: jax.Array | None  # the selected param; None without weight decay
  # scatter(rows, values, after): rows with values written at the selection
  scatter: Callable
  # Where a group writes this leaf's values (see `_grouping.write_group`):
  # each selected entry's place in the leaf's rows, each widened to `width`
  # and flattened, of the buffers' shape, uint32; None where the per-row
  # form addresses the rows (blocks on several devices).
  where: jax.Array | None
  width: int


class Stepped(NamedTuple):
  """One step of a sparse leaf before its :meth:`SparseLeaf.write`."""

  gathered: Gathered
  values: jax.Array  # to write at the selection, of the buffers' shape
  moments: tuple[jax.Array, jax.Array]  # the new (mu, nu)


@dataclasses.dataclass(frozen=True)
class SparseLeaf:
  """One non-empty leaf trained by NanoAdam, and its two operations.

  Its buffers (see :data:`Buffers`) are, for a layout of ``rows`` rows of
  ``k`` slots: ``indices`` shape=(k,), dtype=int32, ascending flat indices
  (blockwise: shape=(rows, k), block-local, int16 or int32); ``mu`` of the
  same shape in ``config.mu_dtype`` and ``config.nu_dtype`` (default: the
  param's dtype). With a density schedule only the first ``k_t`` slots of
  each row are active; the rest are ignored.
  """

  config: _config.LeafConfig
  path: str  # "/"-joined, as ``exclude`` sees it
  layout: _layout.Layout  # rows and buffer sizes
  shape: tuple[int, ...]  # the param's
  dtype: Any  # the param's: of the update and of nu
  sparse_no: int  # place among the sparse leaves; separates random draws
  tree_no: int  # place among all the params' leaves: separates roundings
  # In an update, what that step gives every leaf, computed once for all
  # (`_nanoadam._at_update`); None: computed from the step. Its rounding
  # keys, shape=(2, 2), and its `active_count_change`.
  keys: jax.Array | None = None
  counts: tuple[jax.Array, jax.Array] | None = None
  kind: str = "sparse"

  @classmethod
  def build(
    cls,
    config: _config.LeafConfig,
    path: str,
    shape: tuple[int, ...],
    dtype: Any,
    sparse_no: int,
    tree_no: int,
  ) -> "SparseLeaf":
    """Lays out a non-empty leaf of ``shape``.

    Raises:
      ValueError: its flat indices do not fit int32; the message names the
        leaf by ``path``.
    """
    layout = _layout.make_layout(
      math.prod(shape),
      lambda size: _layout.buffer_size(config.density, size),
      config.block_size,
    )
    # Unused slots hold markers past the row, which must fit int32.
    if layout.row_size + layout.k - 1 > _layout.MAX_INT32:
      raise ValueError(
        f"Parameter {path!r} has {layout.n} entries, beyond int32 flat "
        "indices. Use granularity='block' (block-local indices), or "
        "exclude it."
      )
    return cls(
      config, path, layout, tuple(shape), jnp.dtype(dtype), sparse_no, tree_no
    )

  def init(self) -> Buffers:
    """Zero buffers. No selection yet: the first update always selects, and
    remaps nothing (see ``old_active`` in :meth:`reselect`)."""
    shape = self.layout.buffer_shape
    return (
      jnp.zeros(shape, self.layout.index_dtype),
      jnp.zeros(shape, self.config.mu_dtype or self.dtype),
      jnp.zeros(shape, self.config.nu_dtype or self.dtype),
    )

  def expected_buffers(self) -> _leaf.BufferSpec:
    shape = self.layout.buffer_shape
    return _leaf.BufferSpec(shape, shape, shape, self.layout.index_dtype)

  def active_count(self, step: jax.Array) -> jax.Array:
    """``k_t``, the active slots per row in force at ``step``.

    Args:
      step: updates applied so far, shape=(), dtype=int32.

    Returns:
      shape=(), dtype=int32: ``k`` without a schedule, else
      ``clip(ceil(s(t') * row_size), 1, k)`` with ``t'`` the last re-read.
    """
    config, layout = self.config, self.layout
    if config.density_schedule is None:
      return jnp.asarray(layout.k, jnp.int32)
    read_at = step - step % config.density_interval
    fraction = jnp.asarray(config.density_schedule(read_at), jnp.float32)
    if fraction.shape != ():
      raise ValueError(
        "`density_schedule` must return a scalar (shape ()), one fraction "
        f"for every tensor, got shape {fraction.shape}."
      )
    # Above ``density`` is clipped to it; NaN counts as 0 (one entry).
    fraction = jnp.minimum(jnp.nan_to_num(fraction, nan=0.0), config.density)
    wanted = _layout.ceil_count(fraction, layout.row_size)
    return jnp.clip(wanted, 1, layout.k).astype(jnp.int32)

  def scores(self, param: jax.Array, step: jax.Array) -> jax.Array:
    """Per-row scores, float32 or the param's dtype; the lowest are selected,
    padding never is.

    Returns:
      The layout's rows, shape=(row_size,) or (rows, row_size).
    """
    config = self.config
    if config.select == "random":
      key = jax.random.fold_in(jax.random.key(config.seed), step)
      key = jax.random.fold_in(key, self.sparse_no)
      scores = jax.random.uniform(key, param.shape, jnp.float32)
    elif config.select == "largest":
      scores = -jnp.abs(param)
    else:
      scores = jnp.abs(param)
    return _layout.to_rows(
      _mesh.unsharded(scores), self.layout, pad_value=jnp.inf
    )

  def active_count_change(self, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:meth:`active_count` at ``step`` and before it (0 before the first
    update, when nothing was selected): (new, old)."""
    if self.counts is not None:  # this update's, computed once
      return self.counts
    old = jnp.where(step == 0, 0, self.active_count(step - 1))
    return self.active_count(step), old

  def reselect(
    self, param: jax.Array, step: jax.Array, buffers: Buffers
  ) -> Buffers:
    """A new selection, with the moments remapped or reset.

    Args:
      param: the leaf, of ``shape`` and ``dtype``.
      step: updates applied so far, shape=(), dtype=int32.
      buffers: (indices, mu, nu) selected before ``step``.

    Returns:
      The new (indices, mu, nu): the ``k_t`` lowest scores of each row in
      ascending index order, and their moments (under ``"remap"``: the old
      ones of entries selected before and after, zero for new entries; under
      ``"reset"``: zero). Shapes, dtypes and shardings are the buffers'.
    """
    return self.reselect_rows(self.scores(param, step), step, buffers)

  def to_group_rows(
    self,
    group: _layout.Layout,
    *,
    scores: jax.Array | None = None,
    buffers: Buffers | None = None,
  ) -> Any:
    """This leaf's ``scores`` (or ``buffers``) padded to ``group``, the
    layout of the largest leaf it re-selects with (see ``_grouping``).

    Per tensor (or in a single block), scores are padded with +inf (never
    selected) to the group's ``row_size`` and buffers with zeros to its
    ``k``; a layout of several blocks has the group's rows already (every
    leaf's blocks are ``block_size`` wide), so it needs no padding.
    """

    def pad(x, size, value):
      if self.layout.rows > 1 or x.shape[-1] == size:
        return x
      widths = [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])]
      return jnp.pad(x, widths, constant_values=value)

    if scores is not None:
      return pad(scores, group.row_size, jnp.inf)
    return tuple(pad(b, group.k, 0) for b in buffers)

  def from_group_rows(
    self, group: _layout.Layout, buffers: Buffers, new_active: jax.Array
  ) -> Buffers:
    """Inverse of :meth:`to_group_rows` for re-selected buffers: this leaf's
    ``k`` slots, its unused slots marked past its own row (the group marked
    them past the group's)."""
    layout = self.layout
    chosen, mu, nu = (b[..., : layout.k] for b in buffers)
    if layout.row_size < group.row_size:
      slots = jnp.arange(layout.k, dtype=jnp.int32)
      marker = _layout.unused_marker(layout.row_size, slots)
      chosen = jnp.where(slots < new_active, chosen.astype(jnp.int32), marker)
      chosen = chosen.astype(layout.index_dtype)
    return chosen, mu, nu

  def reselect_rows(
    self,
    scores: jax.Array,
    step: jax.Array,
    buffers: Buffers,
    active: tuple[jax.Array, jax.Array] | None = None,
  ) -> Buffers:
    """:meth:`reselect` from the rows of :meth:`scores`.

    A group of leaves re-selects through its largest leaf (see
    ``_grouping``): ``scores`` and ``buffers`` are then other leaves' rows,
    padded by :meth:`to_group_rows`, and ``active`` gives their
    :meth:`active_count_change`: scalars, or for rows of blocks one count
    per row (rows of several leaves).
    """
    config, layout = self.config, self.layout
    # A padded leaf's k_t lies below its buffer's k even without a schedule.
    masked = active is not None or config.density_schedule is not None
    if active is None:
      active = self.active_count_change(step)
    # One count per row: scalars, or per row of blocks (see `_grouping`).
    new_active, old_active = (
      jnp.broadcast_to(count, scores.shape[:-1]) for count in active
    )
    slots = jnp.arange(layout.k, dtype=jnp.int32)

    def row(scores, old, mu, nu, new_active, old_active):
      chosen = _selection.lowest_k_indices(
        scores, layout.k, new_active if masked else None, config.selection
      )
      if config.moments == "reset":
        return chosen, jnp.zeros_like(mu), jnp.zeros_like(nu)
      # The old slot of each chosen index, read from a row-sized map holding
      # each active old index's slot (k elsewhere). Inactive old slots get
      # out-of-row indices, which the map drops. (A binary search of the old
      # indices takes log2(k) rounds of k gathers: some 20 rounds of a
      # million for a large embedding.)
      old = jnp.where(
        slots < old_active,
        old.astype(jnp.int32),
        _layout.unused_marker(layout.row_size, slots),
      )
      slot_of = jnp.full((layout.row_size,), layout.k, jnp.int32)
      slot_of = slot_of.at[old].set(
        slots, mode="drop", indices_are_sorted=True, unique_indices=True
      )
      at = slot_of.at[chosen].get(
        mode="fill",
        fill_value=layout.k,
        indices_are_sorted=True,
        unique_indices=True,
      )
      kept = (at < old_active) & (slots < new_active)
      at = jnp.minimum(at, layout.k - 1)
      mu = jnp.where(kept, mu[at], jnp.zeros_like(mu))
      nu = jnp.where(kept, nu[at], jnp.zeros_like(nu))
      return chosen, mu, nu

    chosen, mu, nu = _layout.per_row(row, layout)(
      scores, *map(_mesh.unsharded, buffers), new_active, old_active
    )
    chosen = chosen.astype(layout.index_dtype)
    # Both branches of the selection cond must give the same shardings.
    return tuple(
      _mesh.reshard_like(new, old)
      for new, old in zip((chosen, mu, nu), buffers, strict=True)
    )

  def _addressing(
    self, indices: jax.Array, active: jax.Array | None
  ) -> tuple[Callable, Callable, jax.Array | None, int]:
    """How one step reads and writes the selected entries of the leaf's rows.

    Args:
      indices: the selection, of ``buffer_shape``.
      active: None, or which slots the density schedule uses, shape=(k,).

    Returns:
      ``gather(rows)``: the selected entries of rows laid out by
      :func:`_layout.to_rows` (of ``buffer_shape``); and
      ``scatter(rows, values, after)``: those rows with ``values`` written at
      the selection, once ``after`` exists (see :func:`_zeros.zero_after`).
      Unused slots (inactive, or approx_min_k's padding) read zero and write
      nothing. Then the flat positions and the width as :class:`Gathered`
      holds them.
    """
    layout = self.layout
    slots = jnp.arange(layout.k, dtype=jnp.int32)
    where = indices.astype(jnp.int32)
    masked = active is not None or self.config.may_pad
    if active is not None:
      # Inactive slots point past the row, like the padding of approx_min_k.
      where = jnp.where(
        active, where, _layout.unused_marker(layout.row_size, slots)
      )
    # Unsigned: no wrapping of negative indices around the gathers and the
    # scatter (a fusion each per leaf that XLA cannot prove needless).
    where = where.astype(jnp.uint32)
    # Where slots may be unused, each row is addressed with its markers'
    # room after it (`_layout.marker_room`): the gathers read zeros there
    # and the scatter writes there, then drops it. Every position is then in
    # bounds, unique and ascending, so XLA needs no bounds checks: gathers
    # in "fill" and scatters in "drop" mode made the paper's recipe (with
    # 32-bit moments) compile its steady update in 8.1 s instead of 6.4 s,
    # measured on a MiniLM.
    room = _layout.marker_room(layout) if masked else 0
    width = layout.row_size + room
    if layout.blockwise and self.gathers_flat:
      # Each entry's place in the flattened rows.
      row = jnp.arange(layout.rows, dtype=jnp.uint32)[:, None]
      where = where + row * jnp.uint32(width)
    modes = dict(
      indices_are_sorted=True, unique_indices=True, mode="promise_in_bounds"
    )

    def widened(rows):
      if not room:
        return rows
      widths = [(0, 0)] * (rows.ndim - 1) + [(0, room)]
      return jnp.pad(rows, widths)

    def gather_row(row, where):
      return widened(row).reshape(-1).at[where].get(**modes)

    def scatter_row(row, where, values, after):
      # The gathers compute their positions inside their own fusions, but
      # the scatter reads them from memory. Computed from the state alone,
      # XLA would compute every leaf's positions at the start of the step
      # and keep them all to the end; tied to this leaf's gradient, each
      # exists only around its leaf's update.
      where = where + _zeros.zero_after(after).astype(jnp.uint32)
      wide = widened(row)
      out = wide.reshape(-1).at[where].set(values, **modes)
      return out.reshape(wide.shape)[..., : row.shape[-1]]

    if layout.blockwise and not self.gathers_flat:
      gather_rows = _layout.per_row(gather_row, layout)
      scatter_rows = _layout.per_row(scatter_row, layout)
      return (
        lambda rows: gather_rows(rows, where),
        lambda rows, values, after: scatter_rows(rows, where, values, after),
        None,
        width,
      )
    return (
      lambda rows: gather_row(rows, where),
      lambda rows, values, after: scatter_row(rows, where, values, after),
      where,
      width,
    )

  @property
  def gathers_flat(self) -> bool:
    """Whether the step addresses a block leaf through flat positions.

    One flat index per selected entry, where the vmapped per-block gathers
    and scatter need a (block, entry) pair: on one device that halves the
    index arithmetic and lets XLA fuse it into the gathers. On more devices
    the per-block form keeps each block's gathers on the shard that owns it.
    The flat positions, unused slots included, must fit int32 (JAX indexes
    larger arrays with int64).
    """
    layout = self.layout
    fits = layout.rows * (layout.row_size + layout.k) <= _layout.MAX_INT32
    return fits and jax.device_count() == 1

  def gather(
    self,
    grad: jax.Array,
    param: jax.Array,
    buffers: Buffers,
    step: jax.Array,
  ) -> Gathered:
    """The selected entries of ``grad`` (and of ``param``, with weight
    decay) that one Adam step reads, and how to write its update.

    Args:
      grad: the leaf's gradient, of ``shape``.
      param: the leaf, of ``shape`` and ``dtype``.
      buffers: (indices, mu, nu), selected for this step.
      step: updates applied so far, shape=(), dtype=int32.
    """
    config, layout = self.config, self.layout
    slots = jnp.arange(layout.k, dtype=jnp.int32)
    # Without a schedule every slot is active and in bounds: no masking.
    active = None
    if config.density_schedule is not None:
      active = slots < self.active_count_change(step)[0]
    grad_rows = _layout.to_rows(_mesh.unsharded(grad), layout)
    gather, scatter, where, width = self._addressing(
      _mesh.unsharded(buffers[0]), active
    )
    selected_param = None
    if config.decays:
      selected_param = gather(_layout.to_rows(_mesh.unsharded(param), layout))
    return Gathered(gather(grad_rows), selected_param, scatter, where, width)

  def moment_keys(
    self, step: jax.Array, buffers: Buffers
  ) -> tuple[jax.Array | None, jax.Array | None]:
    """The stochastic-rounding keys of (mu, nu) at ``step`` (see
    :func:`_rounding.moment_keys`): None or shape=(2,). Blocks draw with
    one key per block, from :meth:`adam_keys`."""
    config = self.config
    return _rounding.moment_keys(
      config.rounding,
      _rounding.leaf_keys(self.keys, config.seed, step, self.tree_no),
      self.dtype,
      (buffers[1].dtype, buffers[2].dtype),
    )

  def adam_keys(
    self, step: jax.Array, buffers: Buffers
  ) -> tuple[jax.Array | None, jax.Array | None]:
    """:meth:`moment_keys` as :meth:`adam` takes them: for blocks, one key
    per block, shape=(rows, 2) (see :func:`_rounding.row_keys`)."""
    keys = self.moment_keys(step, buffers)
    if not self.layout.blockwise:
      return keys
    return tuple(
      None if key is None else _rounding.row_keys([key], [self.layout.rows])
      for key in keys
    )

  def rounds_stochastically(self, mu_dtype: Any, nu_dtype: Any) -> bool:
    """Whether either moment, stored in these dtypes, is rounded
    stochastically (:meth:`moment_keys` gives it a key)."""
    return any(
      _rounding.is_stochastic(self.config.rounding, self.dtype, stored)
      for stored in (mu_dtype, nu_dtype)
    )

  def adam(
    self,
    grad: jax.Array,
    mu: jax.Array,
    nu: jax.Array,
    param: jax.Array | None,
    step: jax.Array,
    keys: tuple[jax.Array | None, jax.Array | None],
    positions: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adam on selected entries, row by row for blocks: (direction, mu, nu).

    The arrays are this leaf's buffers' shape, or several leaves' buffers
    of this leaf's kind concatenated (see ``_grouping.step_group``), with
    ``keys`` and ``positions`` as :func:`_rounding.store` takes them.
    """
    config = self.config
    bias_count = config.bias_count(step, optax.safe_increment(step))

    def adam(grad, mu, nu, param, keys):
      return _adam.adam_direction(
        grad,
        mu,
        nu,
        param,
        bias_count,
        **config.adam,
        dtype=self.dtype,
        keys=keys,
        positions=positions,
      )

    return _layout.per_row(adam, self.layout)(
      grad, *map(_mesh.unsharded, (mu, nu)), param, keys
    )

  def write(
    self,
    gathered: Gathered,
    values: jax.Array,
    moments: tuple[jax.Array, jax.Array],
    buffers: Buffers,
    param: jax.Array,
    step_size: jax.Array | None,
  ) -> tuple[jax.Array, Buffers]:
    """The dense update with ``values`` (in ``dtype``) at the selection and
    exactly zero elsewhere, and the buffers to store (see :meth:`step`)."""
    # One entry of the gathered gradient per row: the dense buffer and the
    # scatter's positions wait for it (see `_zeros.zeros_after`).
    after = gathered.grad[..., :1]
    dense = gathered.scatter(
      _zeros.zeros_after(
        after,
        self.layout.rows_shape,
        self.dtype,
        _zeros.zero_sign(step_size),
      ),
      values,
      after,
    )
    return self.finish(gathered, dense, moments, buffers, param)

  def finish(
    self,
    gathered: Gathered,
    dense: jax.Array,
    moments: tuple[jax.Array, jax.Array],
    buffers: Buffers,
    param: jax.Array,
  ) -> tuple[jax.Array, Buffers]:
    """:meth:`write`'s result from the update's rows, ``dense`` (of
    ``layout.rows_shape``)."""
    after = gathered.grad[..., :1]
    dense = _layout.from_rows(dense, self.layout, self.shape)
    # The indices do not change, but stored as they come, from the selection
    # `cond`, XLA copies each leaf's into its donated buffer only after every
    # cond has run, holding all of them in temporary memory meanwhile
    # (measured: 3.6 MiB of a 128 MiB MLP's step peak). Written once the
    # leaf's gradient exists, each cond's output can take a free buffer.
    indices = _mesh.unsharded(buffers[0])
    indices = indices + _zeros.zero_after(after).astype(indices.dtype)
    return _mesh.reshard_like(dense, param), tuple(
      _mesh.reshard_like(new, old)
      for new, old in zip((indices, *moments), buffers, strict=True)
    )

  def step(
    self,
    grad: jax.Array,
    param: jax.Array,
    buffers: Buffers,
    step: jax.Array,
    step_size: jax.Array | None,
  ) -> tuple[jax.Array, Buffers]:
    """Adam on the selected entries; an update of exactly zero elsewhere
    (``-0.0`` with a ``step_size``, so that every bit of an unselected param
    survives ``optax.apply_updates``; see :func:`_zeros.zero_sign`).

    :meth:`gather`, :meth:`adam` and :meth:`write` in turn. In an update,
    leaves of one kind run :meth:`adam` once for all
    (``_grouping.step_group``), and small leaves of one dtype write
    through one scatter per group (``_grouping.write_group``).

    Args:
      grad: the leaf's gradient, of ``shape``.
      param: the leaf, of ``shape`` and ``dtype``.
      buffers: (indices, mu, nu), selected for this step.
      step: updates applied so far, shape=(), dtype=int32.
      step_size: None (the unscaled direction), or a scalar that multiplies
        the selected entries before they are written into the update.

    Returns:
      (update, buffers): the update of ``shape`` and ``dtype``, and the
      (indices, mu, nu) to store: the same indices, new moments; each with
      the sharding of what it replaces.
    """
    return self.write(
      *self.stepped(grad, param, buffers, step, step_size),
      buffers,
      param,
      step_size,
    )

  def stepped(
    self,
    grad: jax.Array,
    param: jax.Array,
    buffers: Buffers,
    step: jax.Array,
    step_size: jax.Array | None,
  ) -> "Stepped":
    """:meth:`step` up to its :meth:`write`: what it gathered, the values
    to write (in ``dtype``) and the new moments."""
    gathered = self.gather(grad, param, buffers, step)
    direction, mu, nu = self.adam(
      gathered.grad,
      buffers[1],
      buffers[2],
      gathered.param,
      step,
      self.adam_keys(step, buffers),
    )
    values = _adam.scaled(direction, step_size, self.dtype)
    return Stepped(gathered, values, (mu, nu))
