"""The choices NanoAdam's string options accept, and the one check of them.

Each option is a ``Literal`` (for type checkers) and a tuple of its values
(public, for users and error messages), both written here and nowhere else.
"""

from typing import Any
from typing import Literal
from typing import get_args

#: What a re-selection does to the moments: entries selected before and after
#: keep theirs (``"remap"``), or all restart from zero (``"reset"``).
Moments = Literal["remap", "reset"]
MOMENTS: tuple[str, ...] = get_args(Moments)

#: Which entries are selected: the method (``"smallest"``) and its two
#: ablations.
Select = Literal["smallest", "largest", "random"]
SELECT_RULES: tuple[str, ...] = get_args(Select)

#: The bottom-k backends ``selection=`` names (see ``lowest_k_indices``).
Selection = Literal["auto", "top_k", "radix", "approx"]
SELECTION_BACKENDS: tuple[str, ...] = get_args(Selection)

#: Per-tensor selection (the paper's Algorithm 1) or per contiguous block.
Granularity = Literal["tensor", "block"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)

#: How moments stored narrower than the computation (float32) are rounded.
Rounding = Literal["stochastic", "nearest"]
ROUNDINGS: tuple[str, ...] = get_args(Rounding)

#: The arguments of :func:`nanoadam` and :func:`scale_by_nanoadam` that must
#: stay Python values under ``optax.inject_hyperparams``: they fix buffer
#: sizes, the selection schedule or the code path, or are callables and
#: dtypes that it would call as schedules. Pass
#: ``optax.inject_hyperparams(na.nanoadam, static_args=na.STATIC_ARGS)``; the
#: others (``learning_rate``, ``b1``, ``b2``, ``eps``, ``eps_root``,
#: ``weight_decay``, ``seed``) may be injected.
STATIC_ARGS: tuple[str, ...] = (
  "density",
  "mask_interval",
  "density_schedule",
  "density_interval",
  "moments",
  "select",
  "exclude",
  "mu_dtype",
  "nu_dtype",
  "mask",
  "nesterov",
  "rounding",
  "selection",
  "granularity",
  "block_size",
)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  """Raises ``ValueError`` unless ``value`` is one of ``choices``, naming
  the argument ``name``."""
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
