"""Bottom-k selection over a flat tensor.

NanoAdam re-selects, per tensor, the ``k_t`` entries with the lowest score
(``|theta|`` for the method, ``-|theta|`` or random keys for the ablations).
Every exact backend here returns the same index set as :func:`jax.lax.top_k`:
the ``k_active`` lowest scores, ties broken by the lower flat index, as int32
flat indices in ascending order inside a fixed ``(k,)`` buffer.

Backends (``selection=``):

- ``"top_k"``: the reference, ``jax.lax.top_k`` on ``-scores`` and a sort of
  the result. XLA lowers a large ``k`` to a sort of the whole tensor, which is
  slow for the ``k`` NanoAdam uses.
- ``"radix"``: exact and sort-free. It maps the scores to order-preserving
  unsigned integer keys, finds the ``k_active``-th smallest key with a few
  counting passes, and compacts the chosen entries through bit-packed masks.
  Small tensors (up to ``_SORT_MAX_N`` entries) sort the same keys instead,
  which gives the same indices from a far smaller program.
- ``"approx"``: :func:`jax.lax.approx_min_k`; fast on TPU, not exact.
- ``"auto"``: the fastest exact backend for the platform, see
  :func:`resolve_selection`.

Scores NanoAdam builds carry one sign of zero (``|theta|`` only ``+0.0``,
``-|theta|`` only ``-0.0``), and there all exact backends agree. On scores
that hold both zeros, ``"radix"`` treats them as equal (ties by index) while
``top_k`` takes ``-0.0`` first. XLA:CPU's ``top_k`` also treats bfloat16
subnormals as zero; ``"radix"`` orders them by value, as NumPy does. NaN
scores do not crash a backend; where they land is unspecified.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nanoadam_jax import _layout
from nanoadam_jax._options import SELECTION_BACKENDS
from nanoadam_jax._options import Selection
from nanoadam_jax._options import check_choice

# The exact backend "auto" runs on each platform.
#
# cpu: "radix", measured (2-core x86 VM, jax 0.10.2, float32 |x| of a normal
#   tensor, median of jitted calls, |x| computed in the same jit). Density
#   0.1, in `optax.adamw` updates of the same tensor, with the earlier radix
#   design (a candidate buffer): n = 1M: radix 2.9x, top_k 44x; n = 4M: 0.7x
#   vs 27x (10 ms vs 420 ms); n = 16M: 1.0x vs 34x. The one-loop design now
#   here compiles in half the time and runs 1.0x to 1.4x as long (n = 147K
#   to 11.7M); whole re-selection steps are 1.5x to 4.5x an AdamW update
#   (benchmarks/RESULTS.md). `top_k` wins only below n ~ 4K, by some 30
#   microseconds a call.
# gpu: "radix", not measured. XLA:GPU runs `top_k` as a dedicated kernel only
#   for k <= 16 and sorts the whole tensor otherwise; "radix" is some four to
#   seven bandwidth-bound passes over the scores plus scatters on n / 32
#   words.
# tpu: "radix", not measured. `approx_min_k` is the fast TPU primitive but is
#   not exact; an exact `top_k` with a large k is a full sort network, O(n
#   log^2 n) work, where "radix" streams the tensor a few times and scatters
#   only n / 32 packed words (TPU scatters are slow per element). Time
#   `selection="top_k"` against "radix" on your TPU if selection shows up in
#   a profile.
_AUTO_BACKEND = {"cpu": "radix", "gpu": "radix", "tpu": "radix"}
_AUTO_DEFAULT = "radix"

# Five thresholds are counted per pass over the scores; counts go into 6-bit
# fields of one uint32 per row of 32 entries (a row holds at most 32 < 64).
_FIELD_BITS = 6
# Where the first pass puts its thresholds: sample ranks this many standard
# deviations (of the sampled rank of the target) around the target.
_SAMPLE_SIGMAS = (-2.5, -1.0, 0.0, 1.0, 2.5)
_SAMPLE_SIZE = 1 << 14
# The final compaction scatters 32-entry windows, this many words at a time.
_WINDOW_CHUNK = 1 << 14
# Up to this many entries "radix" sorts its order-preserving keys instead:
# the same indices, from a program XLA:CPU compiles in a tenth of the time
# (measured with `top_k`, which XLA:CPU also runs as a sort: 0.04 s against
# 0.5 s to 0.7 s for n = 384 to 1536), which matters where a model has many
# bias vectors. At n = 1536 a call costs some 0.1 ms more than the radix
# passes; past a few thousand entries the sort loses fast (11 ms against
# 0.5 ms at n = 16384).
_SORT_MAX_N = 4096


def resolve_selection(selection: str, platform: str | None = None) -> str:
  """Names the backend that ``selection`` runs on ``platform``.

  ``"auto"`` resolves to the fastest exact backend for the platform, at trace
  time; every other name resolves to itself. ``"auto"`` never picks
  ``"approx"``: NanoAdam's selection must be exact.

  Args:
    selection: one of ``SELECTION_BACKENDS``.
    platform: ``"cpu"``, ``"gpu"``, ``"tpu"``, ...; ``None`` for
      ``jax.default_backend()``.

  Returns:
    A backend name other than ``"auto"``.
  """
  check_choice("selection", selection, SELECTION_BACKENDS)
  if selection != "auto":
    return selection
  if platform is None:
    platform = jax.default_backend()
  return _AUTO_BACKEND.get(platform, _AUTO_DEFAULT)


def pad_inactive(
  indices: jax.Array, n: int, k_active: jax.Array | None
) -> jax.Array:
  """Replaces the slots at and past ``k_active`` by
  :func:`_layout.unused_marker`, for a row of ``n`` entries."""
  if k_active is None:
    return indices
  slots = jnp.arange(indices.shape[0], dtype=jnp.int32)
  return jnp.where(slots < k_active, indices, _layout.unused_marker(n, slots))


def lowest_k_indices(
  scores: jax.Array,
  k: int,
  k_active: jax.Array | int | None = None,
  selection: Selection = "auto",
) -> jax.Array:
  """Flat indices of the ``k_active`` lowest entries of ``scores``.

  The exact backends (``"top_k"``, ``"radix"``, and ``"auto"``, which picks
  one of them) return the same array on every score NanoAdam builds. They
  differ on two kinds of input only: scores holding both ``+0.0`` and
  ``-0.0`` (``"radix"`` ties them, ``"top_k"`` takes ``-0.0`` first), and
  bfloat16 subnormals (XLA:CPU's ``top_k`` reads them as zero, ``"radix"``
  orders them by value). ``"approx"`` returns the indices of
  :func:`jax.lax.approx_min_k`: on CPU it runs an exact selection of values
  (recall 1 on distinct scores) but gives ties to arbitrary indices; on TPU it
  trades recall (``recall_target=0.95``, its default) for speed. Its output
  has the same form (sorted, unique, padded) but may hold fewer than
  ``k_active`` real indices where the platform returned duplicates.

  Args:
    scores: a 1-D array of float32, bfloat16 or float16 scores; lower is
      selected first. Other floating dtypes use the ``"top_k"`` reference.
    k: the static buffer size, ``0 <= k <= scores.size``.
    k_active: an integer in ``[1, k]``, or ``None`` for ``k``. A concrete
      value outside that range raises; a traced one is clipped into it.
    selection: the backend, one of ``SELECTION_BACKENDS``; ``"auto"`` (the
      default, as for the optimizer) picks the fastest exact one.

  Returns:
    A ``(k,)`` int32 array, ascending: the flat indices of the ``k_active``
    lowest scores (ties go to the lower index), then ``n + slot`` in the
    unused slots.

  Examples:
    >>> import jax.numpy as jnp
    >>> import nanoadam_jax as na
    >>> scores = jnp.array([3.0, 1.0, 2.0, 1.0])
    >>> na.lowest_k_indices(scores, 3)
    Array([1, 2, 3], dtype=int32)
    >>> na.lowest_k_indices(scores, 3, k_active=2)
    Array([1, 3, 6], dtype=int32)

  Raises:
    ValueError: ``selection`` names no backend, ``scores`` is not 1-D and
      floating, ``k`` is outside ``[0, n]``, or a concrete ``k_active`` is
      outside ``[1, k]``.
  """
  check_choice("selection", selection, SELECTION_BACKENDS)
  if scores.ndim != 1:
    raise ValueError(f"`scores` must be 1-D, got shape {scores.shape}.")
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    raise ValueError(f"`scores` must be floating, got {scores.dtype}.")
  n = scores.shape[0]
  if not 0 <= k <= n:
    raise ValueError(f"`k` must be in [0, {n}], got {k}.")
  if k == 0:
    return jnp.zeros((0,), jnp.int32)
  k_active = _checked_k_active(k_active, k)
  backend = resolve_selection(selection)
  if backend == "radix" and scores.dtype in _KEY_BITS:
    if n <= _SORT_MAX_N:
      return _small_row_lowest_k(scores, k, k_active)
    return _radix_lowest_k(scores, k, k_active)
  if backend == "approx":
    return _approx_lowest_k(scores, k, k_active)
  return _top_k_lowest_k(scores, k, k_active)


def _small_row_lowest_k(scores, k, k_active):
  """``"radix"`` on a row of at most ``_SORT_MAX_N`` entries, sort-free.

  The same indices as `_radix_lowest_k` (both zeros share a key, subnormals
  keep their order, ties go to the lower index), by bisection instead of its
  sampled, interpolated search:

  1. The threshold key ``t``, the smallest with at least ``k_active`` keys
     ``<= t``, bit by bit from the top: one counting pass per key bit (32,
     or 16 for 16-bit scores), each a compare and a sum over the row.
  2. Ties at ``t``: the last index to take among them, bit by bit in the
     same way, counting tied entries below an index.
  3. The radix backend's extraction: one pass packs the chosen entries into
     words, which `_compact` turns into ascending indices.

  Every pass reads the raw bits and fuses into one loop, so nothing of the
  row's size is materialized. Under ``vmap`` over the blocks of a leaf each
  pass is one loop over all blocks, which XLA keeps on the shard that holds
  each block (a ``top_k`` of the blocks would be faster still on CPU, but
  XLA gathers its operand across shards). It replaces a stable sort of keys
  and indices (`_sorted_keys_lowest_k`), which made a re-selection of the
  paper's recipe (4096-entry blocks) some five times as long as a steady
  step (``benchmarks/README.md``).
  """
  n = scores.shape[0]
  width = _KEY_BITS[jnp.dtype(scores.dtype)]
  target = jnp.asarray(k if k_active is None else k_active, jnp.int32)
  bits = _raw_bits(scores)

  def narrow_key(i, t):
    bit = _U32(1) << (_U32(width - 1) - i.astype(_U32))
    count = jnp.sum(_key_le(bits, t + (bit - _U32(1))), dtype=jnp.int32)
    return jnp.where(count >= target, t, t + bit)

  t = lax.fori_loop(0, width, narrow_key, _U32(0))

  def below(b):
    return _key_lt(b, t)

  def tied(b):
    return _key_le(b, t) & ~below(b)

  need = target - jnp.sum(below(bits), dtype=jnp.int32)
  index = jnp.arange(n, dtype=jnp.int32)
  index_bits = max(1, (n - 1).bit_length())

  def narrow_index(i, cut):
    bit = jnp.int32(1) << (index_bits - 1 - i)
    count = jnp.sum(tied(bits) & (index < cut + bit), dtype=jnp.int32)
    return jnp.where(count >= need, cut, cut + bit)

  cut = lax.fori_loop(0, index_bits, narrow_index, jnp.int32(0))
  words = _packed_mask(scores, lambda b, i: below(b) | (tied(b) & (i <= cut)))
  return pad_inactive(_compact(words, k), n, target)


def _sorted_keys_lowest_k(scores, k, k_active):
  """A stable sort of the radix keys: exactly the ``"radix"`` order.

  The earlier small-row path, kept as a second reference that
  `_small_row_lowest_k` is tested against.
  """
  n = scores.shape[0]
  index = jnp.arange(n, dtype=jnp.int32)
  _, order = lax.sort((_order_keys(scores), index), num_keys=1)
  order = pad_inactive(order[:k], n, k_active)
  return jnp.sort(order)


def _checked_k_active(k_active: Any, k: int) -> jax.Array | None:
  """``k_active`` as an int32 scalar in ``[1, k]``.

  Outside that range the backends would disagree (``top_k`` pads from the
  slot, ``radix`` searches for a rank that does not exist), so a concrete
  value there raises and a traced one is clipped.
  """
  if k_active is None:
    return None
  if jnp.ndim(k_active) != 0 or not jnp.issubdtype(
    jnp.result_type(k_active), jnp.integer
  ):
    raise ValueError(f"`k_active` must be an integer scalar, got {k_active!r}.")
  if not isinstance(k_active, jax.core.Tracer):
    if not 1 <= int(k_active) <= k:
      raise ValueError(f"`k_active` must lie in [1, k={k}], got {k_active}.")
    return jnp.asarray(k_active, jnp.int32)
  return jnp.clip(jnp.asarray(k_active, jnp.int32), 1, k)


def _top_k_lowest_k(scores, k, k_active):
  """The reference: ``jax.lax.top_k`` on ``-scores``, then a sort."""
  # top_k is stable: among equal values it returns the lower index first.
  _, order = lax.top_k(-scores, k)
  order = pad_inactive(order.astype(jnp.int32), scores.shape[0], k_active)
  return jnp.sort(order)


def _approx_lowest_k(scores, k, k_active):
  """``jax.lax.approx_min_k``, made sorted, unique and padded."""
  n = scores.shape[0]
  _, order = lax.approx_min_k(scores, k)
  order = order.astype(jnp.int32)
  slots = jnp.arange(k, dtype=jnp.int32)
  # Drop inactive slots, out-of-range indices and repeats; sentinels sort last.
  sentinel = jnp.int32(np.iinfo(np.int32).max)
  keep = (order >= 0) & (order < n)
  if k_active is not None:
    keep &= slots < k_active
  order = jnp.sort(jnp.where(keep, order, sentinel))
  repeat = jnp.concatenate([jnp.zeros((1,), bool), order[1:] == order[:-1]])
  order = jnp.sort(jnp.where(repeat, sentinel, order))
  return jnp.where(order == sentinel, n + slots, order)


# ------------------------------------------------------------------- radix --

# Width of the order-preserving key of each supported dtype.
_KEY_BITS = {
  jnp.dtype(jnp.float32): 32,
  jnp.dtype(jnp.bfloat16): 16,
  jnp.dtype(jnp.float16): 16,
}
_U32 = jnp.uint32


def _raw_bits(x: jax.Array) -> jax.Array:
  """The bits of ``x`` as unsigned integers of the same width."""
  width = _KEY_BITS[jnp.dtype(x.dtype)]
  return lax.bitcast_convert_type(x, _U32 if width == 32 else jnp.uint16)


def _order_keys(x: jax.Array) -> jax.Array:
  """Maps floats to uint32 keys whose integer order is the float order.

  Works on the bits only: XLA:CPU flushes subnormals to zero in float
  comparisons, while ``top_k`` orders float32 subnormals exactly. Both zeros
  map to the key of ``+0.0``. 16-bit floats give keys below ``2**16``.
  """
  bits = _raw_bits(x).astype(_U32)
  sign = _U32(1 << (_KEY_BITS[jnp.dtype(x.dtype)] - 1))
  magnitude = sign - _U32(1)
  # Negatives: flip every bit; positives: set the sign bit.
  keys = jnp.where((bits & sign) != 0, ~bits & (sign | magnitude), bits | sign)
  return jnp.where((bits & magnitude) == 0, sign, keys)


def _key_le(bits: jax.Array, t: jax.Array) -> jax.Array:
  """``_order_keys(x) <= t``, from the raw bits of ``x``.

  The bit patterns whose key is ``<= t`` form one interval modulo
  ``2**width``: all negatives plus the positives up to ``t`` when ``t`` is a
  key of a positive, else the negatives from ``~t`` up (never ``-0.0``, whose
  key is that of ``+0.0``). Testing ``bits - start <= length`` costs two
  operations per entry and leaves nothing for XLA to materialize.

  Args:
    bits: raw bits from `_raw_bits`, uint32 or uint16.
    t: a uint32 key scalar, ``<= 2**width - 1``.

  Returns:
    A bool array shaped like ``bits``.
  """
  width = jnp.iinfo(bits.dtype).bits
  sign = _U32(1 << (width - 1))
  top = _U32((1 << width) - 1)
  positive = t >= sign
  start = jnp.where(positive, sign, jnp.maximum(~t & top, sign + _U32(1)))
  length = jnp.where(positive, t, top - start)
  return bits - start.astype(bits.dtype) <= length.astype(bits.dtype)


def _key_lt(bits: jax.Array, t: jax.Array) -> jax.Array:
  """``_order_keys(x) < t``, from the raw bits of ``x``."""
  return _key_le(bits, t - _U32(1)) & (t > 0)


def _rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Splits a 1-D array into ``(n // 32, 32)`` rows and a short tail."""
  w = x.shape[0] // 32
  return x[: w * 32].reshape(w, 32), x[w * 32 :]


def _pack(bits: jax.Array) -> jax.Array:
  """Packs ``(..., m)`` bools, ``m <= 32``, into uint32 words (bit i = i)."""
  shifts = jnp.arange(bits.shape[-1], dtype=_U32)
  return jnp.sum(bits.astype(_U32) << shifts, axis=-1, dtype=_U32)


def _packed_mask(x: jax.Array, predicate) -> jax.Array:
  """``predicate(raw_bits, flat_index)`` over ``x``, packed 32 to a word.

  XLA:CPU fuses the predicate and a 32-wide row reduction into one loop, so
  the mask never exists unpacked.
  """
  main, tail = _rows(x)
  index = lax.broadcasted_iota(jnp.int32, main.shape, 0) * 32
  index += lax.broadcasted_iota(jnp.int32, main.shape, 1)
  words = _pack(predicate(_raw_bits(main), index))
  if tail.shape[0]:
    tail_index = main.size + jnp.arange(tail.shape[0], dtype=jnp.int32)
    tail_word = _pack(predicate(_raw_bits(tail), tail_index))
    words = jnp.concatenate([words, tail_word[None]])
  return words


def _popcount(words: jax.Array) -> jax.Array:
  return lax.population_count(words).astype(jnp.int32)


def _count_at(x: jax.Array, thresholds: jax.Array, hit) -> jax.Array:
  """Per threshold ``t``, the entries of ``x`` where ``hit(bits, at_most, t)``.

  One pass over ``x``: the five thresholds' hits go into 6-bit fields of one
  uint32 per entry, which are summed per 32-entry row and then unpacked.

  Args:
    x: a 1-D array of scores.
    thresholds: a ``(m,)`` uint32 array, ``m <= 5``.
    hit: ``hit(raw_bits, at_most, t)`` on a block of ``x``, bool, where
      ``at_most(t)`` tells which entries of the block have a flat index
      ``<= t``. It compares row and lane numbers: a full-size index array
      would be loop-invariant, and XLA would hoist it out of the search loop
      and read it on every pass, doubling the memory traffic.

  Returns:
    A ``(m,)`` uint32 array of counts.
  """
  main, tail = _rows(x)
  row = lax.broadcasted_iota(_U32, (main.shape[0], 1), 0)
  lane = lax.broadcasted_iota(_U32, (1, 32), 1)

  def at_most(t):
    last_row, last_lane = t >> _U32(5), t & _U32(31)
    return (row < last_row) | ((row == last_row) & (lane <= last_lane))

  bits = _raw_bits(main)
  fields = jnp.zeros(main.shape, _U32)
  for j in range(thresholds.shape[0]):
    hits = hit(bits, at_most, thresholds[j]).astype(_U32)
    fields += hits << (_FIELD_BITS * j)
  fields = jnp.sum(fields, axis=1, dtype=_U32)
  shifts = _FIELD_BITS * jnp.arange(thresholds.shape[0], dtype=_U32)
  fields = (fields[:, None] >> shifts) & _U32((1 << _FIELD_BITS) - 1)
  counts = jnp.sum(fields, axis=0, dtype=_U32)
  if tail.shape[0]:
    tail_index = _U32(main.size) + jnp.arange(tail.shape[0], dtype=_U32)
    bits = _raw_bits(tail)
    hits = [hit(bits, lambda t: tail_index <= t, t) for t in thresholds]
    counts += jnp.sum(jnp.stack(hits).astype(_U32), axis=1, dtype=_U32)
  return counts


def _narrow(state, thresholds, counts, target):
  """Shrinks ``[lo, hi]`` to the gap between thresholds that holds the value.

  ``state = (lo, hi, below, upto)``: the wanted value ``t`` (the smallest
  with at least ``target`` entries ``<= t``) lies in ``[lo, hi]``, ``below``
  entries are ``< lo`` and ``upto`` are ``<= hi``. ``thresholds`` must be
  non-decreasing and inside ``[lo, hi]``; ``counts`` are the entries
  ``<=`` each.
  """
  lo, hi, below, upto = state
  m = thresholds.shape[0]
  j = jnp.sum(counts < target, dtype=jnp.int32)
  prev, nxt = jnp.maximum(j - 1, 0), jnp.minimum(j, m - 1)
  lo = jnp.where(j > 0, thresholds[prev] + _U32(1), lo)
  below = jnp.where(j > 0, counts[prev], below)
  hi = jnp.where(j < m, thresholds[nxt], hi)
  upto = jnp.where(j < m, counts[nxt], upto)
  return lo, hi, below, upto


def _next_thresholds(lo, hi, below, upto, target):
  """Five thresholds in ``[lo, hi - 1]``, ascending, for the next count.

  Two cut the range in thirds, which shrinks it at least threefold whatever
  the data. Two bracket a linear interpolation of where the target lies
  (``below`` entries lie under ``lo``, ``upto`` up to ``hi``), which
  shrinks it some thirtyfold where entries spread evenly over the range, as
  they do over a narrow range of float keys. The last is ``hi - 1``, which
  settles a target at ``hi`` (ties) in one pass. Requires ``lo < hi``.
  """
  span = hi - lo
  third = (span - _U32(1)) // _U32(3)
  even_a, even_b = lo + third, lo + _U32(2) * third
  fraction = (target - below).astype(jnp.float32) - 0.5
  fraction /= jnp.maximum(upto - below, _U32(1)).astype(jnp.float32)
  guess = jnp.clip(fraction, 0.0, 1.0) * span.astype(jnp.float32)
  guess = lo + jnp.minimum(guess.astype(_U32), span - _U32(1))
  step = jnp.maximum(span // _U32(64), _U32(1))
  near_a = jnp.where(guess - lo > step, guess - step, lo)
  near_b = guess + jnp.minimum(step, hi - _U32(1) - guess)
  # Sorts the four by compare-exchange; all are at most hi - 1.
  a, b, c, d = even_a, even_b, near_a, near_b
  a, c = jnp.minimum(a, c), jnp.maximum(a, c)
  b, d = jnp.minimum(b, d), jnp.maximum(b, d)
  a, b = jnp.minimum(a, b), jnp.maximum(a, b)
  c, d = jnp.minimum(c, d), jnp.maximum(c, d)
  b, c = jnp.minimum(b, c), jnp.maximum(b, c)
  return jnp.stack([a, b, c, d, hi - _U32(1)])


def _select_bit(words: jax.Array, rank: jax.Array) -> jax.Array:
  """Position of the ``rank``-th (0-based) set bit of each uint32 word."""
  shape = jnp.broadcast_shapes(words.shape, rank.shape)
  words = jnp.broadcast_to(words, shape)
  rank = jnp.broadcast_to(rank.astype(_U32), shape)
  pos = jnp.zeros(shape, _U32)
  for width in (16, 8, 4, 2, 1):
    low = lax.population_count(words & _U32((1 << width) - 1))
    up = rank >= low
    rank = jnp.where(up, rank - low, rank)
    pos = jnp.where(up, pos + _U32(width), pos)
    words = jnp.where(up, words >> _U32(width), words)
  return pos.astype(jnp.int32)


def _compact(words: jax.Array, size: int) -> jax.Array:
  """Ascending flat positions of the first ``size`` set bits of ``words``.

  Each word's 32 candidate positions are scattered as one window at the
  word's offset (a prefix sum of the words' bit counts), in chunks of
  words. The work is proportional to the tensor, not to ``size``; expanding
  slots to words instead (a scatter and a prefix sum over the slots) is up
  to a third faster on CPU below a million slots, but costs a second prefix
  sum, which XLA:CPU compiles into some six kernels.

  Args:
    words: packed bits, bit ``i`` of word ``w`` standing for entry
      ``32 * w + i``.
    size: the static number of slots.

  Returns:
    A ``(size,)`` int32 array; slots past the number of set bits hold
    unspecified values.
  """
  num_words = words.shape[0]
  counts = _popcount(words)
  starts = jnp.cumsum(counts, dtype=jnp.int32) - counts
  chunk = min(_WINDOW_CHUNK, num_words)
  num_chunks = -(-num_words // chunk)
  pad = num_chunks * chunk - num_words
  words = jnp.pad(words, (0, pad))
  counts = jnp.pad(counts, (0, pad))
  starts = jnp.pad(starts, (0, pad), constant_values=size)
  numbers = lax.ScatterDimensionNumbers(
    update_window_dims=(1,),
    inserted_window_dims=(),
    scatter_dims_to_operand_dims=(0,),
  )
  lanes = jnp.arange(32, dtype=jnp.int32)

  def scatter_chunk(i, out):
    first = i * chunk
    w = lax.dynamic_slice(words, (first,), (chunk,))
    c = lax.dynamic_slice(counts, (first,), (chunk,))
    s = lax.dynamic_slice(starts, (first,), (chunk,))
    base = (first + jnp.arange(chunk, dtype=jnp.int32)) * 32
    pos = base[:, None] + _select_bit(w[:, None], lanes[None, :])
    # Lanes past a word's count would overwrite its successors' slots; -1
    # loses every max against a real position.
    pos = jnp.where(lanes[None, :] < c[:, None], pos, -1)
    return lax.scatter_max(
      out,
      jnp.minimum(s, size)[:, None],
      pos,
      numbers,
      indices_are_sorted=True,
      mode=lax.GatherScatterMode.CLIP,
    )

  out = jnp.full((size + 32,), -1, jnp.int32)
  if num_chunks == 1:
    out = scatter_chunk(0, out)
  else:
    out = lax.fori_loop(0, num_chunks, scatter_chunk, out)
  return out[:size]


# The search state of `_radix_lowest_k`, one uint32 vector (so that each
# pass updates it in one small kernel, not one per field).
_LO, _HI, _BELOW, _UPTO, _PHASE, _KEY, _BASE, _PASSES = range(8)
# Its phases.
_KEY_PHASE, _INDEX_PHASE, _DONE = 0, 1, 2


def _radix_lowest_k(
  scores: jax.Array,
  k: int,
  k_active: jax.Array | None,
  sample_size: int = _SAMPLE_SIZE,
) -> jax.Array:
  """The ``"radix"`` backend: exact bottom-k without a sort of ``scores``.

  1. Keys: the scores' bits, mapped so that unsigned integer order is float
     order (`_order_keys`). Passes over the scores test key ranges on the
     raw bits instead (`_key_le`), so XLA fuses each pass into one loop.
  2. The threshold key ``t``, the ``k_active``-th smallest key, by counting
     passes. The first counts five quantiles of a sorted strided sample of
     ``sample_size`` scores around the target rank, which brackets ``t`` in
     ``[lo, hi]`` holding a fraction of a percent of the entries; each later
     pass counts five thresholds inside the bracket, two at an
     interpolation of where the target lies (`_next_thresholds`), and keeps
     the gap that holds it. The search stops as soon as exactly
     ``k_active`` entries lie up to ``hi`` (then ``t = hi`` and no tie needs
     breaking), else when the bracket is one key.
  3. Ties at ``t``, when more entries share the key than are wanted: the
     same passes, now over flat indices among the tied entries, find the
     last index to take (lower indices first).
  4. Extraction: one pass packs ``key < t or (key == t and index <= cut)``
     into words, and `_compact` turns the words into ascending indices.

  One while loop runs all passes of steps 2 and 3 (one counting kernel, a
  phase flag in the state), so XLA:CPU compiles few kernels: about 30, a
  third of a sort-free design with a candidate buffer, which matters where
  a model compiles one selection per tensor shape. Nothing of size n is
  materialized beyond the scores themselves (an expression such as
  ``jnp.abs(params)`` is materialized once, as the loop's operand).
  Timings: see ``_AUTO_BACKEND``.

  Args:
    scores: a 1-D float32, bfloat16 or float16 array.
    k: the static buffer size, ``1 <= k <= n``.
    k_active: an int32 scalar in ``[1, k]``, or ``None`` for ``k``.
    sample_size: the number of sampled scores; the whole tensor (sorted)
      when it has at most this many entries.

  Returns:
    The ``(k,)`` int32 array that `lowest_k_indices` describes.
  """
  n = scores.shape[0]
  key_top = (1 << _KEY_BITS[jnp.dtype(scores.dtype)]) - 1
  target = _U32(k) if k_active is None else jnp.asarray(k_active, _U32)

  # First thresholds: sample ranks some standard deviations around the
  # target's, whose keys bracket it with high probability.
  stride = (n // sample_size) | 1  # odd: no aliasing with 2^i-wide rows
  sample = jnp.sort(_order_keys(scores[::stride]))
  m = sample.shape[0]
  rank = (target.astype(jnp.float32) - 0.5) * (m / n)
  sigma = jnp.sqrt(jnp.maximum(rank * (1.0 - rank / m), 0.0)) + 1.0
  at = rank + sigma * jnp.asarray(_SAMPLE_SIGMAS, jnp.float32)
  at = jnp.clip(jnp.round(at), 0, m - 1).astype(jnp.int32)
  first = sample[at]
  # A run of equal thresholds (ties) wastes a pass; test one below instead.
  repeat = first[:-1] == first[1:]
  lower = jnp.where(repeat & (first[:-1] > 0), first[:-1] - 1, first[:-1])
  first = jnp.concatenate([lower, first[-1:]])

  def hit(bits, at_most, t, v):
    """Key phase: key <= t. Index phase: tied at the key, index <= t."""
    tied = _key_le(bits, v[_KEY]) & ~_key_lt(bits, v[_KEY])
    index_phase = tied & at_most(t)
    return jnp.where(v[_PHASE] == _KEY_PHASE, _key_le(bits, t), index_phase)

  def body(carry):
    v, x = carry
    # Ties `x` to the loop state, so that XLA cannot hoist the raw-bit view
    # of `x` out of the loop and materialize it (a copy of the scores).
    x, v = lax.optimization_barrier((x, v))
    key_phase = v[_PHASE] == _KEY_PHASE
    later = _next_thresholds(v[_LO], v[_HI], v[_BELOW], v[_UPTO], target)
    thresholds = jnp.where(v[_PASSES] == 0, first, later)
    counts = _count_at(x, thresholds, lambda b, i, t: hit(b, i, t, v))
    # Index-phase counts add the entries keyed below the threshold.
    counts += jnp.where(key_phase, _U32(0), v[_BASE])
    state = (v[_LO], v[_HI], v[_BELOW], v[_UPTO])
    lo, hi, below, upto = _narrow(state, thresholds, counts, target)
    exact = upto == target  # take every entry up to hi
    done = exact | (lo == hi)
    to_index = key_phase & done & ~exact  # more entries tie at the key
    key = jnp.where(key_phase & done, hi, v[_KEY])
    base = jnp.where(key_phase & done, below, v[_BASE])
    # Once done, lo holds the last index to take.
    last = jnp.where(key_phase, _U32(n - 1), hi)
    lo = jnp.where(to_index, _U32(0), jnp.where(done, last, lo))
    hi = jnp.where(to_index, _U32(n - 1), hi)
    phase = jnp.where(to_index, _U32(_INDEX_PHASE), v[_PHASE])
    phase = jnp.where(done & ~to_index, _U32(_DONE), phase)
    passes = v[_PASSES] + _U32(1)
    return jnp.stack([lo, hi, below, upto, phase, key, base, passes]), x

  start = [0, key_top, 0, n, _KEY_PHASE, 0, 0, 0]
  start = jnp.asarray(start, _U32)
  v = lax.while_loop(
    lambda carry: carry[0][_PHASE] != _DONE, body, (start, scores)
  )[0]
  threshold, cut = v[_KEY], v[_LO].astype(jnp.int32)
  below_threshold = lambda bits: _key_lt(bits, threshold)
  is_threshold = lambda bits: _key_le(bits, threshold) & ~below_threshold(bits)
  words = _packed_mask(
    scores,
    lambda bits, index: (
      below_threshold(bits) | (is_threshold(bits) & (index <= cut))
    ),
  )
  return pad_inactive(_compact(words, k), n, target.astype(jnp.int32))
