"""The Explicit-mesh helpers: reshard under Explicit axes, no-ops otherwise."""

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from nanoadam_jax import _mesh


def test_no_mesh_means_no_op():
  x = jnp.arange(4.0)
  assert _mesh.explicit_spec(x) is None
  assert _mesh.reshard(x, PartitionSpec("x")) is x
  assert _mesh.unsharded(x) is x


def test_explicit_axes_carry_and_change_the_spec():
  mesh = jax.make_mesh((1,), ("x",), axis_types=(AxisType.Explicit,))
  with jax.set_mesh(mesh):
    x = jax.device_put(jnp.arange(4.0), NamedSharding(mesh, PartitionSpec("x")))
    assert _mesh.explicit_spec(x) == PartitionSpec("x")
    whole = _mesh.unsharded(x)
    assert _mesh.explicit_spec(whole) == PartitionSpec(None)
    back = _mesh.reshard(whole, _mesh.explicit_spec(x))
    assert _mesh.explicit_spec(back) == PartitionSpec("x")
    # None (an array off an Explicit mesh) leaves the array as it is.
    assert _mesh.reshard(x, None) is x
