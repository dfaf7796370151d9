"""NanoAdam for JAX: Adam on each tensor's smallest-magnitude entries.

An Optax gradient transformation implementing "Pay Attention to Small
Weights" (Zhou et al., NeurIPS 2025).
"""

from nanoadam_jax._checkpoint import check_checkpoint
from nanoadam_jax._inspect import Description
from nanoadam_jax._inspect import LeafReport
from nanoadam_jax._inspect import describe
from nanoadam_jax._inspect import selection_mask
from nanoadam_jax._memory import state_bytes
from nanoadam_jax._nanoadam import nanoadam
from nanoadam_jax._nanoadam import scale_by_nanoadam
from nanoadam_jax._options import GRANULARITIES
from nanoadam_jax._options import MOMENTS
from nanoadam_jax._options import ROUNDINGS
from nanoadam_jax._options import SELECT_RULES
from nanoadam_jax._options import SELECTION_BACKENDS
from nanoadam_jax._options import STATIC_ARGS
from nanoadam_jax._selection import lowest_k_indices
from nanoadam_jax._sharding import annotate_optimizer_sharding
from nanoadam_jax._sharding import state_shardings
from nanoadam_jax._state import ScaleByNanoAdamState

__version__ = "0.1.0"

__all__ = (
  "Description",
  "GRANULARITIES",
  "LeafReport",
  "MOMENTS",
  "ROUNDINGS",
  "SELECTION_BACKENDS",
  "SELECT_RULES",
  "STATIC_ARGS",
  "ScaleByNanoAdamState",
  "annotate_optimizer_sharding",
  "check_checkpoint",
  "describe",
  "lowest_k_indices",
  "nanoadam",
  "scale_by_nanoadam",
  "selection_mask",
  "state_bytes",
  "state_shardings",
)
