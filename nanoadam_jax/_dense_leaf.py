"""The two simple kinds of leaf: dense (AdamW) and frozen (no training).

A leaf matched by ``exclude`` is trained by dense AdamW with the
transformation's hyperparameters, unless it is not a float (or is empty):
then it is frozen, with a zero update and no state. Both offer the interface
of ``_leaf.Leaf``.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nanoadam_jax import _adam
from nanoadam_jax import _config
from nanoadam_jax import _leaf
from nanoadam_jax import _rounding
from nanoadam_jax import _zeros


@dataclasses.dataclass(frozen=True)
class DenseLeaf:
  """An excluded float leaf: AdamW on every entry.

  Its buffers: no indices (an ``optax.MaskedNode``: orbax cannot save
  zero-size arrays, and ``optax.masked`` marks absent state the same way),
  ``mu`` and ``nu`` of the param's shape in ``config.mu_dtype`` and
  ``config.nu_dtype`` (default: the param's dtype).
  """

  config: _config.LeafConfig
  path: str
  shape: tuple[int, ...]
  dtype: Any
  tree_no: int  # place among all the params' leaves: separates roundings
  # In an update, its rounding keys at that step, shape=(2, 2), computed
  # with every leaf's (`_rounding.update_keys`); None: computed from tree_no.
  keys: jax.Array | None = None
  kind: str = "dense"

  def init(self) -> _leaf.Buffers:
    return (
      optax.MaskedNode(),
      jnp.zeros(self.shape, self.config.mu_dtype or self.dtype),
      jnp.zeros(self.shape, self.config.nu_dtype or self.dtype),
    )

  def expected_buffers(self) -> _leaf.BufferSpec:
    return _leaf.BufferSpec(None, self.shape, self.shape)

  def step(
    self,
    grad: jax.Array,
    param: jax.Array,
    buffers: _leaf.Buffers,
    step: jax.Array,
    step_size: jax.Array | None,
  ) -> tuple[jax.Array, _leaf.Buffers]:
    """AdamW's update of the whole leaf, as ``optax.adamw`` computes it."""
    config = self.config
    indices, mu, nu = buffers
    direction, mu, nu = _adam.adam_direction(
      grad,
      mu,
      nu,
      param if config.decays else None,
      optax.safe_increment(step),
      **config.adam,
      dtype=self.dtype,
      keys=_rounding.moment_keys(
        config.rounding,
        _rounding.leaf_keys(self.keys, config.seed, step, self.tree_no),
        self.dtype,
        (mu.dtype, nu.dtype),
      ),
    )
    return _adam.scaled(direction, step_size, self.dtype), (indices, mu, nu)


@dataclasses.dataclass(frozen=True)
class FrozenLeaf:
  """A leaf nothing trains (excluded and not a float, or empty): a zero
  update (``-0.0`` with a step size, see :func:`_zeros.zero_sign`) and no
  state."""

  path: str
  shape: tuple[int, ...]
  dtype: Any
  kind: str = "frozen"

  def init(self) -> _leaf.Buffers:
    return (optax.MaskedNode(),) * 3

  def expected_buffers(self) -> _leaf.BufferSpec:
    return _leaf.BufferSpec(None, None, None)

  def step(
    self,
    grad: jax.Array,
    param: jax.Array,
    buffers: _leaf.Buffers,
    step: jax.Array,
    step_size: jax.Array | None,
  ) -> tuple[jax.Array, _leaf.Buffers]:
    zeros = _zeros.zeros(self.shape, self.dtype, _zeros.zero_sign(step_size))
    return zeros, buffers
