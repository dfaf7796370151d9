"""Sphinx configuration: MyST Markdown pages, autodoc from the docstrings.

Build with ``make docs`` (warnings are errors); tests/test_docs.py builds it
too and runs every page's Python blocks.
"""

import pathlib
import pkgutil
import sys

from sphinx.pycode import ModuleAnalyzer

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports the package from the tree

import nanoadam_jax  # noqa: E402

project = "nanoadam-jax"
author = "nanoadam-jax contributors"
copyright = "2026, nanoadam-jax contributors"
release = nanoadam_jax.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",  # Args:, Returns:, Raises:, Examples: sections
  "sphinx.ext.mathjax",  # the docstrings' .. math:: and :math:
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

# Markdown: $...$ math and ```{directive}``` blocks; "#"-anchors to headings
# of the three top levels, so links like guides/options.md#static-arguments
# resolve.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Autodoc: members in source order; signatures without type hints, which
# expand Optax's aliases (ScalarOrSchedule) into unreadable unions; the
# docstrings' Args say what each argument takes.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_preserve_defaults = True  # show `density=0.1`, not an evaluated repr
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = "nanoadam-jax"
html_theme_options = {"description": "NanoAdam for JAX, an Optax transform"}


def _constant_docs(app, what, name, obj, options, lines):
  """A constant such as ``na.STATIC_ARGS`` has no docstring of its own, and
  autodoc would print its type's (tuple's). Show instead the ``#:`` comment
  above its definition in the private module that defines it, if any; the
  page's own text follows."""
  if what != "data" or type(obj).__module__ != "builtins":
    return
  lines.clear()
  short = name.rsplit(".", 1)[-1]
  for module in sorted(pkgutil.iter_modules(nanoadam_jax.__path__)):
    analyzer = ModuleAnalyzer.for_module(f"nanoadam_jax.{module.name}")
    doc = analyzer.find_attr_docs().get(("", short))
    if doc:
      lines.extend([*doc, ""])
      return


def setup(app):
  app.connect("autodoc-process-docstring", _constant_docs)
