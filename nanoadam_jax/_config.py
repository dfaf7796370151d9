"""What every leaf of one NanoAdam transformation shares.

:class:`LeafConfig` holds the hyperparameters (Python values that fix shapes
and control flow, and Adam's, which may be traced) and answers the two
questions of the schedule: does this step re-select, and what is its
bias-correction count.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nanoadam_jax import _checks
from nanoadam_jax import _layout
from nanoadam_jax import _options


def as_step_interval(value: int) -> int:
  """``value``, capped at the int32 maximum.

  The step count is int32 and saturates there, so an interval at or beyond
  it comes round only at step 0: "select once, never again".
  """
  return min(int(value), _layout.MAX_INT32)


@dataclasses.dataclass(frozen=True)
class LeafConfig:
  """What every leaf of one transformation shares: the hyperparameters and
  the re-selection schedule.

  The Python values fix shapes and control flow; ``seed`` and the Adam
  hyperparameters may be traced (e.g. under ``optax.inject_hyperparams``).
  """

  density: float  # sizes the buffers
  mask_interval: int
  density_schedule: Callable[[jax.Array], Any] | None
  density_interval: int | None  # set when density_schedule is
  moments: _options.Moments
  select: _options.Select
  selection: _options.Selection  # the bottom-k backend
  block_size: int | None  # None: the whole tensor is one row
  mu_dtype: Any | None  # stored first moment; None: the param's dtype
  nu_dtype: Any | None  # stored second moment; None: the param's dtype
  rounding: _options.Rounding  # how moments stored narrower are rounded
  seed: Any
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  weight_decay: Any  # a scalar, or a schedule until :meth:`at_step`
  nesterov: bool = False

  @property
  def adam(self) -> dict[str, Any]:
    """The hyperparameters of :func:`_adam.adam_direction`."""
    return dict(
      b1=self.b1,
      b2=self.b2,
      eps=self.eps,
      eps_root=self.eps_root,
      weight_decay=self.weight_decay,
      nesterov=self.nesterov,
    )

  @property
  def decays(self) -> bool:
    """False when weight decay is known to be zero: the lean step skips
    gathering params."""
    if callable(self.weight_decay):
      return True
    return _checks.concrete_float(self.weight_decay) != 0.0

  def at_step(self, step: jax.Array) -> "LeafConfig":
    """This config with a weight-decay schedule read at ``step``.

    As ``optax.add_decayed_weights`` does, the schedule is called with the
    count of updates applied so far (0 at the first update).

    Raises:
      ValueError: the schedule's value is not a scalar.
    """
    if not callable(self.weight_decay):
      return self
    decay = jnp.asarray(self.weight_decay(step))
    if decay.shape != ():
      raise ValueError(
        "A `weight_decay` schedule must return a scalar (shape ()), got "
        f"shape {decay.shape}."
      )
    return dataclasses.replace(self, weight_decay=decay)

  @property
  def may_pad(self) -> bool:
    """approx_min_k may return fewer real indices than slots (padded past the
    row), so its gathers and scatters cannot promise to stay in bounds."""
    return self.selection == "approx"

  def selects_at(self, step: jax.Array) -> jax.Array:
    """Whether sparse leaves re-select before the update at ``step``.

    Args:
      step: updates applied so far, shape=(), dtype=int32.

    Returns:
      shape=(), dtype=bool.
    """
    due = step % self.mask_interval == 0
    if self.density_schedule is not None:
      due |= step % self.density_interval == 0
    return due

  def bias_count(self, step: jax.Array, count: jax.Array) -> jax.Array:
    """The bias-correction count of the sparse leaves' update at ``step``.

    Args:
      step: updates applied so far, shape=(), dtype=int32.
      count: ``step + 1`` (saturating), the dense leaves' count.

    Returns:
      shape=(), dtype=int32: ``count`` under ``"remap"``; under ``"reset"``
      the steps since the last re-selection, this one included.
    """
    if self.moments != "reset":
      return count
    last = step - step % self.mask_interval
    if self.density_schedule is not None:
      last = jnp.maximum(last, step - step % self.density_interval)
    return step - last + 1
