"""Construction-time checks of NanoAdam's hyperparameters."""

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nanoadam_jax import _options


def concrete_float(value: Any, name: str = "value") -> float | None:
  """``float(value)``, or None when it is traced (e.g. inject_hyperparams).

  Raises:
    TypeError: ``value`` is not a real scalar (None, a string, a bool, a
      complex number or an array of another shape), naming ``name``.
  """
  is_number = isinstance(
    value, int | float | np.number | np.ndarray | jax.Array
  )
  if isinstance(value, bool) or not is_number or jnp.ndim(value) != 0:
    shape = f" of shape {jnp.shape(value)}" if is_number else ""
    raise TypeError(
      f"`{name}` must be a real scalar, got {type(value).__name__}{shape}: "
      f"{value!r}."
    )
  if jnp.iscomplexobj(value):
    raise TypeError(f"`{name}` must be real, got {value!r}.")
  if isinstance(value, jax.core.Tracer):
    return None
  return float(value)


def is_int(value: Any) -> bool:
  return isinstance(value, int | jnp.integer) and not isinstance(value, bool)


def check_static_number(name: str, value: Any) -> None:
  """Shape-fixing arguments must be Python numbers, not (traced) arrays."""
  if isinstance(value, jax.Array):
    raise TypeError(
      f"`{name}` fixes buffer sizes or the selection schedule, so it must "
      f"be a Python number, got a {type(value).__name__}. Under "
      f"optax.inject_hyperparams, list {name!r} in `static_args`."
    )


def check_interval(name: str, value: Any) -> None:
  check_static_number(name, value)
  if not is_int(value) or value < 1:
    raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def check_hyperparams(
  *,
  density: float,
  mask_interval: int,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  weight_decay: Any,
  density_schedule: Any,
  density_interval: Any,
  moments: str,
  select: str,
  mu_dtype: Any,
  seed: Any,
) -> None:
  """Raises on a bad hyperparameter, naming it."""
  check_static_number("density", density)
  if isinstance(density, bool) or not isinstance(
    density, int | float | jnp.number
  ):
    raise TypeError(f"`density` must be a number, got {density!r}.")
  if not 0.0 < float(density) <= 1.0:
    raise ValueError(f"`density` must lie in (0, 1], got {density!r}.")
  check_interval("mask_interval", mask_interval)
  if density_schedule is not None:
    if not callable(density_schedule):
      hint = ""
      if is_injected(density_schedule):
        hint = static_args_hint("density_schedule")
      raise TypeError(
        "`density_schedule` must be a callable step -> fraction, got "
        f"{type(density_schedule).__name__}.{hint}"
      )
    if density_interval is None:
      raise ValueError(
        "`density_schedule` needs `density_interval`: how many steps "
        "apart the schedule is re-read."
      )
  if density_interval is not None:
    if density_schedule is None:
      raise ValueError(
        "`density_interval` was given without `density_schedule`; it has "
        "no effect alone."
      )
    check_interval("density_interval", density_interval)
  for name, value in (("b1", b1), ("b2", b2)):
    concrete = concrete_float(value, name)
    if concrete is not None and not 0.0 <= concrete < 1.0:
      raise ValueError(f"`{name}` must lie in [0, 1), got {value!r}.")
  scalars = [("eps", eps), ("eps_root", eps_root)]
  if not callable(weight_decay):  # else a schedule, as optax.adamw's
    scalars.append(("weight_decay", weight_decay))
  for name, value in scalars:
    concrete = concrete_float(value, name)
    if concrete is not None and not concrete >= 0.0:
      raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
  _options.check_choice("moments", moments, _options.MOMENTS)
  _options.check_choice("select", select, _options.SELECT_RULES)
  check_moment_dtype("mu_dtype", mu_dtype)
  check_seed(seed)


def check_flag(name: str, value: Any) -> None:
  if not isinstance(value, bool | np.bool_):
    raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def check_seed(seed: Any) -> None:
  """An int, or an integer scalar array: traced under
  ``optax.inject_hyperparams``, which ``jax.random.key`` takes."""
  if isinstance(seed, jax.Array | np.ndarray):
    is_seed = seed.ndim == 0 and jnp.issubdtype(seed.dtype, jnp.integer)
  else:
    is_seed = is_int(seed)
  if not is_seed:
    raise TypeError(
      f"`seed` must be an int or an integer scalar array, got {seed!r}."
    )


def static_args_hint(name: str) -> str:
  """What to do when ``optax.inject_hyperparams`` turned ``name`` into a
  value: it calls every callable argument not in ``static_args`` as a
  schedule, and turns numbers into arrays."""
  return (
    f" Under optax.inject_hyperparams, list {name!r} in `static_args`: "
    "it calls every other callable argument as a schedule step -> value."
  )


def is_injected(value: Any) -> bool:
  """Whether ``value`` looks like what inject_hyperparams made of an
  argument: an array or a number."""
  return isinstance(value, jax.Array | np.ndarray | np.generic | int | float)


def check_moment_dtype(name: str, dtype: Any) -> None:
  """None, or a floating-point dtype (anything ``jnp.dtype`` reads)."""
  if dtype is None:
    return
  if isinstance(dtype, jax.Array):
    # inject_hyperparams called ``jnp.bfloat16`` (a callable) as a schedule.
    raise TypeError(
      f"`{name}` must be a dtype, got an array.{static_args_hint(name)}"
    )
  try:
    floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
  except TypeError as error:
    raise TypeError(f"`{name}` is not a dtype: {dtype!r} ({error}).") from None
  if not floating:
    raise ValueError(f"`{name}` must be a floating-point dtype, got {dtype!r}.")


def check_granularity(granularity: str, block_size: Any) -> None:
  _options.check_choice("granularity", granularity, _options.GRANULARITIES)
  if granularity == "block":
    check_static_number("block_size", block_size)
    if not is_int(block_size) or block_size < 1:
      raise ValueError(
        "granularity='block' needs `block_size`, an integer >= 1, got "
        f"{block_size!r}."
      )
  elif block_size is not None:
    raise ValueError(
      "`block_size` was given with granularity='tensor'; pass "
      "granularity='block' to select per block."
    )


# Steps at which a density schedule is probed at construction, in units of
# ``density_interval``: the start, then a few decades of a run.
_SCHEDULE_PROBES = (0, 1, 10, 100, 1_000, 10_000)


def warn_if_schedule_leaves_range(
  schedule: Any, density: float, interval: int
) -> None:
  """Warns when ``schedule`` returns a fraction outside ``(0, density]``.

  The update clamps such values (above ``density`` to ``density``; zero,
  negative and NaN to one entry per row), which is rarely what was meant.
  Schedules are cheap pure functions, so a few steps are evaluated here; one
  that cannot run outside ``jit`` (or with an int32 step) is not probed.
  """
  outside = []
  for probe in _SCHEDULE_PROBES:
    step = min(probe * interval, 2**31 - 1)
    try:
      with jax.ensure_compile_time_eval():
        value = float(schedule(jnp.asarray(step, jnp.int32)))
    except Exception:  # noqa: BLE001  the update will raise if it must
      return
    # The update compares in float32: float32(0.1) is not above 0.1 there.
    in_range = 0.0 < np.float32(value) <= np.float32(density)
    if math.isnan(value) or not in_range:
      outside.append(f"{value:g} at step {step}")
  if outside:
    warnings.warn(
      f"`density_schedule` leaves (0, density={density:g}]: "
      f"{', '.join(outside)}. The update clamps values above `density` to "
      "it, and selects one entry per tensor (per block) for zero, negative "
      "or NaN values.",
      UserWarning,
      stacklevel=4,
    )
