"""The Adam arithmetic shared by sparse and dense leaves."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from nanoadam_jax import _rounding
from nanoadam_jax._checks import concrete_float


def _one_minus(decay: Any, dtype: Any) -> jax.Array:
  """``1 - decay`` in ``dtype``, from the exact value when it is concrete.

  ``1 - float32(0.999)`` is 1.3e-5 off ``float32(1 - 0.999)``; Optax subtracts
  in Python, and so must we to match it.
  """
  concrete = concrete_float(decay)
  if concrete is None:
    return 1 - jnp.asarray(decay, dtype)
  return jnp.asarray(1 - concrete, dtype)


def _wider_float(a: Any, b: Any) -> Any:
  """The float dtype both ``a`` and ``b`` convert to without loss.

  Written out because ``jnp.promote_types`` obeys strict dtype promotion.
  """
  a, b = jnp.dtype(a), jnp.dtype(b)
  if a == b:
    return a
  if a.itemsize != b.itemsize:
    return a if a.itemsize > b.itemsize else b
  return jnp.dtype(jnp.float32)  # bfloat16 with float16


def compute_dtype(*dtypes: Any) -> Any:
  """The dtype one step computes in: float32, or the widest of ``dtypes``
  (the param's, the stored moments') where that is wider.

  A 16-bit param's moments and update are computed in float32 and rounded
  once, into the stored moments and the returned update: in bfloat16,
  ``(1 - b2) * g**2`` is below half an ulp of ``nu``, and in float16 the
  squares of small gradients and ``eps`` underflow to zero.
  """
  widest = jnp.dtype(jnp.float32)
  for dtype in dtypes:
    widest = _wider_float(widest, dtype)
  return widest


def scaled(direction: jax.Array, step_size: Any, dtype: Any) -> jax.Array:
  """``step_size * direction``, computed in the direction's dtype and
  rounded once to ``dtype`` (the param's).

  ``step_size=None`` gives the direction itself, cast to ``dtype``.
  """
  if step_size is not None:
    direction = jnp.asarray(step_size, direction.dtype) * direction
  return direction.astype(dtype)


def adam_direction(
  grad: jax.Array,
  mu: jax.Array,
  nu: jax.Array,
  param: jax.Array | None,
  bias_count: jax.Array,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  weight_decay: Any,
  *,
  nesterov: bool = False,
  dtype: Any = None,
  keys: tuple[jax.Array | None, jax.Array | None] = (None, None),
  positions: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One AdamW step on matching arrays; returns (direction, mu, nu).

  The moments are updated in :func:`compute_dtype` (float32 at least,
  whatever the param's ``dtype``, default the gradient's), the step is
  computed from those unrounded moments, and only what is stored is cast
  back to the stored moments' dtypes: stochastically where ``keys`` (for
  ``mu``, ``nu``) holds a key (see :func:`_rounding.store`, which also
  takes ``positions``), else to nearest. The direction is returned in the
  compute dtype.

  The operation order follows ``optax.scale_by_adam`` followed by
  ``optax.add_decayed_weights``, so that a dense run matches ``optax.adamw``
  to the params' rounding; ``nesterov`` as ``scale_by_adam(nesterov=True)``.
  """
  dtype = grad.dtype if dtype is None else dtype
  compute = compute_dtype(dtype, mu.dtype, nu.dtype)
  grad = grad.astype(compute)
  new_mu = _one_minus(b1, compute) * grad + jnp.asarray(b1, compute) * (
    mu.astype(compute)
  )
  new_nu = _one_minus(b2, compute) * (grad * grad) + jnp.asarray(
    b2, compute
  ) * nu.astype(compute)
  # Bias corrections in float32 at least: 1 - b2**c is 1e-3 at c=1.
  precise = _wider_float(compute, jnp.float32)
  count = bias_count.astype(precise)
  mu_correction = 1 - jnp.asarray(b1, precise) ** count
  nu_correction = 1 - jnp.asarray(b2, precise) ** count
  mu_hat = new_mu / mu_correction.astype(compute)
  if nesterov:  # Optax's: b1 mu / (1 - b1^(c+1)) + (1 - b1) g / (1 - b1^c)
    next_count = optax.safe_increment(bias_count).astype(precise)
    next_correction = 1 - jnp.asarray(b1, precise) ** next_count
    mu_hat = jnp.asarray(b1, compute) * (
      new_mu / next_correction.astype(compute)
    ) + _one_minus(b1, compute) * (grad / mu_correction.astype(compute))
  nu_hat = new_nu / nu_correction.astype(compute)
  eps_root = jnp.asarray(eps_root, compute)
  eps = jnp.asarray(eps, compute)
  direction = mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps)
  if param is not None:  # None: weight decay is known to be zero
    weight_decay = jnp.asarray(weight_decay, compute)
    direction = direction + weight_decay * param.astype(compute)
  mu_key, nu_key = keys
  return (
    direction,
    _rounding.store(new_mu, mu.dtype, mu_key, positions),
    _rounding.store(new_nu, nu.dtype, nu_key, positions),
  )
