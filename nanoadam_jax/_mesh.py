"""Explicit-mesh shardings inside the jitted step.

Under ``jax.sharding.AxisType.Explicit`` mesh axes a sharding is part of an
array's type, so the step must say where its arrays live: ``top_k`` refuses a
sharded axis, a flattening reshape of a tensor split along two axes is
ambiguous, and both branches of the selection ``cond`` must agree on the
buffers' shardings. Under Auto axes (or without a mesh) XLA decides, and
these helpers do nothing. (:mod:`nanoadam_jax._sharding` derives the state's
shardings from the params'; it imports the state, hence this separate
module.)
"""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


def explicit_spec(x: jax.Array) -> PartitionSpec | None:
  """``x``'s PartitionSpec when its mesh has Explicit axes, else None."""
  sharding = jax.typeof(x).sharding
  return sharding.spec if sharding.mesh.explicit_axes else None


def reshard(x: jax.Array, spec: PartitionSpec | None) -> jax.Array:
  """Gives ``x`` the sharding ``spec`` under Explicit mesh axes; else a no-op.

  ``spec=None`` (what :func:`explicit_spec` says of an array off an Explicit
  mesh) leaves ``x`` as it is.
  """
  if spec is None or explicit_spec(x) is None:
    return x
  mesh = jax.typeof(x).sharding.mesh
  return jax.sharding.reshard(x, NamedSharding(mesh, spec))


def reshard_like(x: jax.Array, like: jax.Array) -> jax.Array:
  """``x`` with the sharding of ``like`` under Explicit mesh axes (what a
  step's output takes from the array it replaces); else a no-op."""
  return reshard(x, explicit_spec(like))


def unsharded(x: jax.Array) -> jax.Array:
  """``x`` replicated under Explicit mesh axes, to be flattened into rows."""
  return reshard(x, PartitionSpec())
