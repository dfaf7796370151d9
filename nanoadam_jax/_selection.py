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
from typing import Literal
from typing import get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The bottom-k backends ``selection=`` names.
Selection = Literal["auto", "top_k", "radix", "approx"]
SELECTION_BACKENDS: tuple[str, ...] = get_args(Selection)

# The exact backend "auto" runs on each platform.
#
# cpu: "radix", measured (2-core x86 VM, jax 0.10.2, float32 |x| of a normal
#   tensor, median of jitted calls, |x| computed in the same jit). Density
#   0.1, in `optax.adamw` updates of the same tensor: n = 1M: radix 2.9x,
#   top_k 44x; n = 4M: 0.7x vs 27x (10 ms vs 420 ms); n = 16M: 1.0x vs 34x.
#   Density 0.01: 0.5x to 1.8x vs 3x to 6x. `top_k` wins only below n ~ 4K,
#   by some 30 microseconds a call.
# gpu: "radix", not measured. XLA:GPU runs `top_k` as a dedicated kernel only
#   for k <= 16 and sorts the whole tensor otherwise; "radix" is three
#   bandwidth-bound passes over the scores plus scatters on n / 32 words.
# tpu: "radix", not measured. `approx_min_k` is the fast TPU primitive but is
#   not exact; an exact `top_k` with a large k is a full sort network, O(n
#   log^2 n) work, where "radix" streams the tensor a few times and scatters
#   only n / 32 packed words (TPU scatters are slow per element). Time
#   `selection="top_k"` against "radix" on your TPU if selection shows up in
#   a profile.
_AUTO_BACKEND = {"cpu": "radix", "gpu": "radix", "tpu": "radix"}
_AUTO_DEFAULT = "radix"

# Thresholds counted per pass over the scores. Counts go into 6-bit fields of
# one uint32 per row of 32 entries (a row holds at most 32 < 64 hits).
_NUM_THRESHOLDS = 5
_FIELD_BITS = 6
# Where the first pass puts its thresholds: sample ranks this many standard
# deviations (of the sampled rank of the target) around the target.
_SAMPLE_SIGMAS = (-2.5, -1.0, 0.0, 1.0, 2.5)
_SAMPLE_SIZE = 1 << 14
# The final compaction scatters 32-entry windows (work ~ n) when k is at least
# this fraction of n and this large; else it expands slots to words (work ~ k,
# but several k-sized temporaries). Measured crossover on CPU.
_WINDOW_DENSITY = 1 / 16
_WINDOW_MIN_K = 1 << 20
_WINDOW_CHUNK = 1 << 14


def check_selection(selection: str) -> None:
  """Raises ``ValueError`` unless ``selection`` names a backend."""
  if selection not in SELECTION_BACKENDS:
    raise ValueError(
      f"`selection` must be one of {SELECTION_BACKENDS}, got {selection!r}."
    )


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
  check_selection(selection)
  if selection != "auto":
    return selection
  if platform is None:
    platform = jax.default_backend()
  return _AUTO_BACKEND.get(platform, _AUTO_DEFAULT)


def pad_inactive(
  indices: jax.Array, n: int, k_active: jax.Array | None
) -> jax.Array:
  """Replaces the slots at and past ``k_active`` by ``n + slot``.

  The padding is out of bounds (so gathers fill and scatters drop it), unique,
  and larger than every real index, so the buffer stays sorted and unique.
  """
  if k_active is None:
    return indices
  slots = jnp.arange(indices.shape[0], dtype=jnp.int32)
  return jnp.where(slots < k_active, indices, n + slots)


def lowest_k_indices(
  scores: jax.Array,
  k: int,
  k_active: jax.Array | int | None = None,
  selection: Selection = "auto",
) -> jax.Array:
  """Flat indices of the ``k_active`` lowest entries of ``scores``.

  The exact backends (``"top_k"``, ``"radix"``, and ``"auto"``, which picks
  one of them) return the same array (on the two corner cases where they
  differ, see the module docstring). ``"approx"`` returns the indices of
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
  check_selection(selection)
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
    return _radix_lowest_k(scores, k, k_active)
  if backend == "approx":
    return _approx_lowest_k(scores, k, k_active)
  return _top_k_lowest_k(scores, k, k_active)


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


def _count_le(x: jax.Array, thresholds: jax.Array, le) -> jax.Array:
  """Counts, per threshold, the entries whose key is ``<=`` it, in one pass.

  Args:
    x: a 1-D array.
    thresholds: a ``(m,)`` uint32 array of keys, ``m <= 5``.
    le: ``le(block, t)`` tells, per entry of a block of ``x``, whether its key
      is ``<= t``.

  Returns:
    A ``(m,)`` int32 array of counts.
  """
  main, tail = _rows(x)
  fields = jnp.zeros(main.shape, _U32)
  for j in range(thresholds.shape[0]):
    hit = le(main, thresholds[j]).astype(_U32)
    fields += hit << (_FIELD_BITS * j)
  fields = jnp.sum(fields, axis=1, dtype=_U32)
  shifts = _FIELD_BITS * jnp.arange(thresholds.shape[0], dtype=_U32)
  fields = (fields[:, None] >> shifts) & _U32((1 << _FIELD_BITS) - 1)
  counts = jnp.sum(fields.astype(jnp.int32), axis=0, dtype=jnp.int32)
  if tail.shape[0]:
    hit = jnp.stack([le(tail, t) for t in thresholds])
    counts += jnp.sum(hit.astype(jnp.int32), axis=1, dtype=jnp.int32)
  return counts


def _narrow(state, thresholds, counts, k_active):
  """Shrinks ``[lo, hi]`` to the gap between thresholds that holds the key.

  ``state = (lo, hi, below, upto)``: the wanted key ``t`` (the smallest key
  with at least ``k_active`` entries ``<= t``) lies in ``[lo, hi]``, ``below``
  entries have keys ``< lo`` and ``upto`` have keys ``<= hi``. ``thresholds``
  must be non-decreasing and inside ``[lo, hi]``.
  """
  lo, hi, below, upto = state
  m = thresholds.shape[0]
  j = jnp.sum(counts < k_active, dtype=jnp.int32)
  prev, nxt = jnp.maximum(j - 1, 0), jnp.minimum(j, m - 1)
  lo = jnp.where(j > 0, thresholds[prev] + _U32(1), lo)
  below = jnp.where(j > 0, counts[prev], below)
  hi = jnp.where(j < m, thresholds[nxt], hi)
  upto = jnp.where(j < m, counts[nxt], upto)
  return lo, hi, below, upto


def _split_thresholds(lo, hi):
  """Thresholds cutting ``[lo, hi]`` into near-equal parts, plus ``hi - 1``.

  The last threshold settles ``t == hi`` in one pass, which is the common end
  for ties (say a tensor of zeros). Requires ``lo < hi``.
  """
  m = _NUM_THRESHOLDS
  span = hi - lo  # >= 1; the parts cover [lo, hi - 1].
  step = (span - _U32(1)) // _U32(m) + _U32(1)
  j = jnp.arange(1, m, dtype=_U32)
  even = lo + jnp.minimum(j * step - _U32(1), span - _U32(1))
  return jnp.concatenate([even, (hi - _U32(1))[None]])


def _search(state, x, count_fn, k_active, done_fn=None):
  """Narrows ``state`` (see `_narrow`) to one key or until ``done_fn``.

  Args:
    state: ``(lo, hi, below, upto)``.
    x: the array that ``count_fn(x, thresholds)`` counts in.
    count_fn: returns the ``(m,)`` counts of keys ``<=`` each threshold.
    k_active: the target rank.
    done_fn: an optional early stop, ``done_fn(state) -> bool``.

  Returns:
    The final state.
  """

  def cond(carry):
    lo, hi, _, _ = state = carry[0]
    if done_fn is None:
      return lo < hi
    return (lo < hi) & ~done_fn(state)

  def body(carry):
    state, x = carry
    # Ties `x` to the loop state, so that XLA cannot hoist the raw-bit view
    # of `x` out of the loop and materialize it (a copy of the scores).
    x, lo = lax.optimization_barrier((x, state[0]))
    thresholds = _split_thresholds(lo, state[1])
    counts = count_fn(x, thresholds)
    return _narrow(state, thresholds, counts, k_active), x

  return lax.while_loop(cond, body, (state, x))[0]


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


def _compact(words: jax.Array, size: int, windows: bool) -> jax.Array:
  """Ascending flat positions of the first ``size`` set bits of ``words``.

  Slots past the number of set bits hold unspecified values.

  Args:
    words: packed bits, bit ``i`` of word ``w`` standing for entry
      ``32 * w + i``.
    size: the static number of slots.
    windows: scatter each word's 32 candidate positions as one window (work
      proportional to the tensor; best for large ``size``), or else expand
      slots to words with a scatter-add and a cumsum over the slots (work
      proportional to ``size``).

  Returns:
    A ``(size,)`` int32 array.
  """
  num_words = words.shape[0]
  counts = _popcount(words)
  ends = jnp.cumsum(counts, dtype=jnp.int32)
  starts = ends - counts
  if not windows:
    # The word holding slot j is the number of words that end at or before j.
    ended = jnp.zeros((size,), jnp.int32).at[ends].add(1, mode="drop")
    word = jnp.minimum(jnp.cumsum(ended, dtype=jnp.int32), num_words - 1)
    rank = jnp.arange(size, dtype=jnp.int32) - starts[word]
    return word * 32 + _select_bit(words[word], jnp.clip(rank, 0, 31))
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


def _radix_lowest_k(
  scores: jax.Array,
  k: int,
  k_active: jax.Array | None,
  sample_size: int = _SAMPLE_SIZE,
  capacity: int | None = None,
) -> jax.Array:
  """The ``"radix"`` backend: exact bottom-k without a sort of ``scores``.

  1. Keys: the scores' bits, mapped so that unsigned integer order is float
     order (`_order_keys`). Passes over the scores test key ranges on the
     raw bits instead (`_key_le`).
  2. Threshold key ``t``, the ``k_active``-th smallest key. A strided sample
     of ``sample_size`` scores is sorted; one counting pass over the scores
     counts the keys ``<=`` five sample quantiles around the target rank,
     which brackets ``t`` in ``[lo, hi]``. While more than ``capacity`` keys
     remain in the bracket (rare: ties, or a sample that misrepresents the
     tensor), further passes cut it about five-fold. The keys in the bracket are
     then compacted into a ``(capacity,)`` buffer, where the same search
     finishes cheaply. Each pass packs its five counts into 6-bit fields, so
     it reads the scores once.
  3. Ties at ``t``: the buffer gives the flat index of the last tied entry to
     take (lower indices first); a pass over packed equality bits gives it
     when the buffer cannot.
  4. Extraction: one pass packs ``key < t or (key == t and index <= cut)``
     into words, and `_compact` turns the words into ascending indices.

  Everything runs on raw bits (`_key_le`), so XLA fuses each pass into one
  loop over the scores; nothing of size n is materialized. If ``scores`` is
  an expression (``jnp.abs(params)``), XLA materializes it once, since the
  fallback loop takes it as an operand. Timings: see ``_AUTO_BACKEND``.

  Args:
    scores: a 1-D float32, bfloat16 or float16 array.
    k: the static buffer size, ``1 <= k <= n``.
    k_active: an int32 scalar in ``[1, k]``, or ``None`` for ``k``.
    sample_size: the number of sampled scores.
    capacity: the candidate buffer size; ``None`` picks one from ``n``.

  Returns:
    The ``(k,)`` int32 array that `lowest_k_indices` describes.
  """
  n = scores.shape[0]
  key_top = _U32((1 << _KEY_BITS[jnp.dtype(scores.dtype)]) - 1)
  if k_active is None:
    target = jnp.int32(k)
  else:
    target = jnp.asarray(k_active, jnp.int32)
  if capacity is None:
    # A power of two >= n / 128: the first pass leaves about
    # 1.3 * n * sqrt(p (1 - p) / sample_size) keys, p = k_active / n.
    capacity = max(1 << 14, 1 << (-(-n // 128) - 1).bit_length())

  score_le = lambda block, t: _key_le(_raw_bits(block), t)
  count_scores = lambda x, ts: _count_le(x, ts, score_le)
  if n <= capacity:
    # Every entry is a candidate.
    state = (_U32(0), key_top, jnp.int32(0), jnp.int32(n))
    capacity = -(-n // 32) * 32
    position = jnp.arange(capacity, dtype=jnp.int32)
  else:
    stride = (n // sample_size) | 1  # odd: no aliasing with 2^i-wide rows
    sample = jnp.sort(_order_keys(scores[::stride]))
    m = sample.shape[0]
    rank = (target.astype(jnp.float32) - 0.5) * (m / n)
    sigma = jnp.sqrt(rank * (1.0 - rank / m)) + 1.0
    at = rank + sigma * jnp.asarray(_SAMPLE_SIGMAS, jnp.float32)
    at = jnp.clip(jnp.round(at), 0, m - 1).astype(jnp.int32)
    thresholds = sample[at]
    # A run of equal thresholds (ties) wastes passes; test one below instead.
    repeat = thresholds[:-1] == thresholds[1:]
    lower = jnp.where(
      repeat & (thresholds[:-1] > 0), thresholds[:-1] - _U32(1), thresholds[:-1]
    )
    thresholds = jnp.concatenate([lower, thresholds[-1:]])
    state = (_U32(0), key_top, jnp.int32(0), jnp.int32(n))
    state = _narrow(state, thresholds, count_scores(scores, thresholds), target)
    state = _search(
      state,
      scores,
      count_scores,
      target,
      lambda s: s[3] - s[2] <= capacity,
    )
    lo, hi = state[0], state[1]
    words = _packed_mask(
      scores, lambda bits, _: _key_le(bits, hi) & ~_key_lt(bits, lo)
    )
    position = _compact(words, capacity, windows=False)

  # Candidate keys; empty slots get `hi`, which no threshold below `hi` counts.
  lo, hi, below, upto = state
  filled = jnp.arange(capacity, dtype=jnp.int32) < upto - below
  position = jnp.where(filled, position, n - 1)
  candidate = jnp.where(filled, _order_keys(scores[position]), hi)
  candidate_le = lambda block, t: block <= t
  count_candidates = lambda x, ts: below + _count_le(x, ts, candidate_le)
  threshold = _search(state, candidate, count_candidates, target)[0]

  # Ties: take the lowest-index entries whose key equals the threshold.
  less = below + jnp.sum(filled & (candidate < threshold), dtype=jnp.int32)
  need = target - less
  tied = jnp.cumsum(filled & (candidate == threshold), dtype=jnp.int32)
  found = tied[-1] >= need
  cut_from_buffer = position[jnp.argmax(tied >= need)]

  below_threshold = lambda bits: _key_lt(bits, threshold)
  is_threshold = lambda bits: _key_le(bits, threshold) & ~below_threshold(bits)

  def cut_from_pass():
    # Only when more than `capacity` entries tie at the threshold.
    words = _packed_mask(scores, lambda bits, _: is_threshold(bits))
    counts = jnp.cumsum(_popcount(words), dtype=jnp.int32)
    word = jnp.argmax(counts >= need).astype(jnp.int32)
    rank = need - 1 - (counts[word] - _popcount(words[word]))
    return word * 32 + _select_bit(words[word], rank)

  if n <= capacity:
    cut = cut_from_buffer  # the buffer holds every entry
  else:
    cut = lax.cond(found, lambda: cut_from_buffer, cut_from_pass)

  words = _packed_mask(
    scores,
    lambda bits, index: (
      below_threshold(bits) | (is_threshold(bits) & (index <= cut))
    ),
  )
  windows = k >= _WINDOW_DENSITY * n and k >= _WINDOW_MIN_K
  indices = _compact(words, k, windows=windows)
  return pad_inactive(indices, n, target)
