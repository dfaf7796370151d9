"""Leaf paths and exclusion."""

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


def test_exclude_regex_callable_and_none():
  leaf = jnp.ones(2)
  rule = lambda exclude: _tree.compile_exclude(exclude)({})
  assert rule("norm|head")("encoder/norm/scale", leaf)
  assert not rule("norm|head")("encoder/kernel", leaf)
  assert rule(re.compile("^emb"))("embed/table", leaf)
  by_rank = rule(lambda path, leaf: leaf.ndim < 2)
  assert by_rank("bias", leaf)
  assert not rule(None)("anything", leaf)


PARAMS = {
  "encoder": {"kernel": jnp.ones((2, 2)), "norm": {"scale": jnp.ones(2)}},
  "head": jnp.ones(2),
}


def _flags(rule, params=PARAMS):
  paths, leaves, _ = _tree.leaf_paths(params)
  flag = rule(params)
  return {p: flag(p, x) for p, x in zip(paths, leaves, strict=True)}


@pytest.mark.parametrize(
  "exclude",
  [
    # A full tree of bools, as Optax's masks.
    {
      "encoder": {"kernel": False, "norm": {"scale": True}},
      "head": True,
    },
    # A prefix tree: one bool flags a whole subtree.
    {"encoder": {"kernel": False, "norm": True}, "head": True},
    # A callable on the params returning such a tree.
    lambda params: jax.tree.map(lambda x: x.ndim < 2, params),
    # The (path, leaf) predicate, told apart by its two parameters.
    lambda path, leaf: leaf.ndim < 2,
  ],
  ids=["tree", "prefix-tree", "params-callable", "path-leaf-callable"],
)
def test_exclude_forms_of_optax_masks(exclude):
  assert _flags(_tree.compile_exclude(exclude)) == {
    "encoder/kernel": False,
    "encoder/norm/scale": True,
    "head": True,
  }


def test_callables_are_told_apart_by_required_positional_parameters():
  assert _tree.takes_params(lambda params: params)
  assert _tree.takes_params(lambda params, extra=None: params)
  assert not _tree.takes_params(lambda path, leaf: True)
  assert not _tree.takes_params(lambda *args: True)
  assert not _tree.takes_params(max)  # builtins: (path, leaf)


def test_bool_trees_match_nnx_state_by_path():
  """A tree mapped over nnx.state (Variables) fits the plain arrays that
  update sees, as paths drop the Variable's value."""
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  exclude = jax.tree.map(lambda x: x.ndim < 2, state)
  arrays = jax.tree.map(lambda v: v, nnx.to_pure_dict(state))
  for params in (state, arrays):
    assert _flags(_tree.compile_exclude(exclude), params) == {
      "bias": True,
      "kernel": False,
    }


def test_mask_rule_defaults_to_all_and_takes_trees():
  assert set(_flags(_tree.compile_mask(None)).values()) == {True}
  mask = _tree.compile_mask(lambda params: {"encoder": True, "head": False})
  assert _flags(mask) == {
    "encoder/kernel": True,
    "encoder/norm/scale": True,
    "head": False,
  }


@pytest.mark.parametrize(
  ("spec", "error", "message"),
  [
    ({"encoder": True}, ValueError, r"exclude.*no entry for.*'head'"),
    ({"encoder": 1, "head": True}, TypeError, r"Python bools.*'encoder'"),
    (True, TypeError, r"exclude.*static_args"),
    (jnp.asarray(True), TypeError, r"exclude.*static_args"),
  ],
)
def test_bad_bool_trees_name_the_path(spec, error, message):
  with pytest.raises(error, match=message):
    _flags(_tree.compile_exclude(spec))


def test_traced_flags_are_refused():
  rule = _tree.compile_exclude(lambda params: jax.tree.map(jnp.all, params))
  with pytest.raises(TypeError, match="Python bools"):
    jax.jit(lambda params: _flags(rule, params) and 0)(PARAMS)


def test_regex_matching_no_path_warns():
  with pytest.warns(UserWarning, match=r"'haed' matches no parameter path"):
    _tree.warn_if_unmatched("haed", ["encoder/kernel", "head"])
  _tree.warn_if_unmatched("head", ["encoder/kernel", "head"])  # no warning
  _tree.warn_if_unmatched(lambda path, leaf: False, ["head"])  # regex only


def test_route_leaves_marks_excluded_and_rejects_integers():
  params = {"kernel": jnp.ones((2, 2)), "norm": jnp.ones(2)}
  exclude = _tree.compile_exclude("norm")({})
  paths, _, _, sparse = _tree.route_leaves(params, exclude)
  assert dict(zip(paths, sparse, strict=True)) == {
    "kernel": True,
    "norm": False,
  }
  with pytest.raises(TypeError, match="'count'.*int32"):
    _tree.route_leaves({"count": jnp.zeros(2, jnp.int32)}, exclude)


def test_route_leaves_accepts_shape_dtype_structs():
  params = {"w": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16)}
  exclude = _tree.compile_exclude(None)({})
  _, leaves, _, sparse = _tree.route_leaves(params, exclude)
  assert sparse == [True]
  assert leaves[0].shape == (3, 4)


def test_route_leaves_makes_numpy_and_python_numbers_jax_arrays():
  params = {"a": np.ones(3, np.float32), "c": 1.5, "n": 2}
  exclude = _tree.compile_exclude("n")({})
  _, leaves, _, sparse = _tree.route_leaves(params, exclude)
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  a, c, n = leaves
  assert a.dtype == jnp.float32 and c.dtype == jnp.float32 and c.shape == ()
  assert not c.weak_type and n.dtype == jnp.int32
  assert sparse == [True, True, False]


def test_package_ships_py_typed():
  """PEP 561: without the marker, type checkers ignore the package's hints."""
  import importlib.resources

  marker = importlib.resources.files("nanoadam_jax") / "py.typed"
  assert marker.is_file()
