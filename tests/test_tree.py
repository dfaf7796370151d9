"""Leaf paths, exclusion and buffer sizes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nanoadam_jax import _tree


def test_paths_join_dict_list_and_attribute_keys():
  tree = {"blocks": [{"kernel": 1.0}, {"kernel": 2.0}], "head": (3.0,)}
  paths, leaves, _ = _tree.leaf_paths(tree)
  assert paths == ["blocks/0/kernel", "blocks/1/kernel", "head/0"]
  assert leaves == [1.0, 2.0, 3.0]


def test_nnx_variables_and_pure_arrays_give_the_same_paths():
  class Model(nnx.Module):
    def __init__(self):
      self.linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))

  state = nnx.state(Model(), nnx.Param)
  with_variables, _, _ = _tree.leaf_paths(state)
  pure, _, _ = _tree.leaf_paths(nnx.as_pure(state))
  assert with_variables == pure == ["linear/bias", "linear/kernel"]


@pytest.mark.parametrize(
  ("density", "n", "k"),
  [
    (0.1, 100, 10),
    (0.07, 100, 7),  # 0.07 * 100 is 7.000000000000001 in binary
    (0.001, 10, 1),  # at least one entry
    (0.5, 3, 2),
    (1.0, 17, 17),
    (0.3, 0, 0),  # empty tensor
    (0.1, 1, 1),  # scalar
  ],
)
def test_buffer_size(density, n, k):
  assert _tree.buffer_size(density, n) == k


@pytest.mark.parametrize(
  ("fraction", "n", "count"),
  [
    (0.07, 100, 7),  # 7.000000000000001 in float64
    (0.05, 100, 5),  # 5.0000001 in float32
    (0.013, 1000, 13),
    (1 / 3, 3, 1),
    (0.3, 7, 3),  # 2.1: a part of an entry is an entry
    (0.5, 1_000_001, 500_001),  # half an entry among a million still counts
  ],
)
def test_ceil_count_is_one_rule_static_and_traced(fraction, n, count):
  static = _tree.ceil_count(fraction, n)
  assert type(static) is int and static == count
  traced = jax.jit(lambda f: _tree.ceil_count(f, n))(jnp.float32(fraction))
  assert traced.dtype == jnp.float32 and int(traced) == count


def test_ceil_count_static_tolerance_is_float64_rounding():
  # 1999799999.0001: a ten-thousandth of an entry, far above float64
  # rounding (a 12-significant-digit rule would drop it).
  assert _tree.ceil_count(0.9999, 1_999_999_999) == 1_999_800_000


def test_exclude_regex_callable_and_none():
  leaf = jnp.ones(2)
  assert _tree.compile_exclude("norm|head")("encoder/norm/scale", leaf)
  assert not _tree.compile_exclude("norm|head")("encoder/kernel", leaf)
  assert _tree.compile_exclude(re.compile("^emb"))("embed/table", leaf)
  by_rank = _tree.compile_exclude(lambda path, leaf: leaf.ndim < 2)
  assert by_rank("bias", leaf)
  assert not _tree.compile_exclude(None)("anything", leaf)


def test_route_leaves_marks_excluded_and_rejects_integers():
  params = {"kernel": jnp.ones((2, 2)), "norm": jnp.ones(2)}
  exclude = _tree.compile_exclude("norm")
  paths, _, _, sparse = _tree.route_leaves(params, exclude)
  assert dict(zip(paths, sparse, strict=True)) == {
    "kernel": True,
    "norm": False,
  }
  with pytest.raises(TypeError, match="'count'.*int32"):
    _tree.route_leaves({"count": jnp.zeros(2, jnp.int32)}, exclude)


def test_route_leaves_accepts_shape_dtype_structs():
  params = {"w": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16)}
  _, leaves, _, sparse = _tree.route_leaves(params, _tree.compile_exclude(None))
  assert sparse == [True]
  assert leaves[0].shape == (3, 4)


def test_package_ships_py_typed():
  """PEP 561: without the marker, type checkers ignore the package's hints."""
  import importlib.resources

  marker = importlib.resources.files("nanoadam_jax") / "py.typed"
  assert marker.is_file()


def test_route_leaves_makes_numpy_and_python_numbers_jax_arrays():
  params = {"a": np.ones(3, np.float32), "c": 1.5, "n": 2}
  _, leaves, _, sparse = _tree.route_leaves(params, _tree.compile_exclude("n"))
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  a, c, n = leaves
  assert a.dtype == jnp.float32 and c.dtype == jnp.float32 and c.shape == ()
  assert not c.weak_type and n.dtype == jnp.int32
  assert sparse == [True, True, False]
