"""The documentation site: it builds with warnings as errors, every page's
Python blocks run as written, the API page covers ``nanoadam_jax.__all__``,
and the relative links of the README and the pages point to files."""

import functools
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import nanoadam_jax as na

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(page: pathlib.Path) -> list[str]:
  """The page's Python blocks, except sketches that elide code (...)."""
  blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
  return [block for block in blocks if "\n...\n" not in block]


@functools.cache
def run_page(page: pathlib.Path) -> dict:
  """Runs the page's blocks in order in one namespace, as a reader would.

  Once per page and session: the tests that check what a page's snippets
  did read the same namespace (the options guide's test changes its state).
  """
  namespace: dict = {}
  # Optax's schedules and inject_hyperparams are not strict-promotion
  # clean; the pages show user code, which runs under standard rules.
  with jax.numpy_dtype_promotion("standard"):
    for block in python_blocks(page):
      exec(compile(block, str(page), "exec"), namespace)
  return namespace


def test_site_builds_without_warnings(tmp_path):
  result = subprocess.run(
    [
      sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
      "-b", "html", "-d", str(tmp_path / "doctrees"),
      str(DOCS), str(tmp_path / "html"),
    ],
    capture_output=True, text=True, timeout=600, check=False,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-4000:]
  api = (tmp_path / "html" / "api.html").read_text()
  for name in na.__all__:
    assert f'id="nanoadam_jax.{name}"' in api, name
  # Every page is in a toctree (else Sphinx warns), so the glob toctrees
  # pick up pages added later under guides/ and results/.
  for page in PAGES:
    html = tmp_path / "html" / page.relative_to(DOCS).with_suffix(".html")
    assert html.exists(), page


def test_api_page_lists_every_public_name():
  text = (DOCS / "api.md").read_text()
  documented = set(re.findall(r"^\.\. auto\w+:: (\w+)", text, re.MULTILINE))
  missing = set(na.__all__) - documented
  assert not missing, f"add to docs/api.md: {sorted(missing)}"


def test_layout_page_lists_every_module():
  text = (DOCS / "layout.md").read_text()
  modules = [
    f"{folder}/{p.name}"
    for folder in ("nanoadam_jax", "examples", "studies")
    for p in sorted((ROOT / folder).glob("*.py"))
  ]
  missing = [name for name in modules if name not in text]
  assert not missing, f"add to docs/layout.md: {missing}"


@pytest.mark.parametrize(
  "page",
  [p for p in PAGES if python_blocks(p)],
  ids=lambda p: str(p.relative_to(DOCS)),
)
def test_page_snippets_run_in_order(page):
  run_page(page)


def test_index_example_trains():
  namespace = run_page(DOCS / "index.md")
  assert namespace["losses"][-1] < 0.5 * namespace["losses"][0]


def test_multi_device_guide_trains():
  """Its train step moves weights (a zero head would leave every gradient
  zero): exactly the k = 0.125 * 262144 selected encoder entries."""
  page = run_page(DOCS / "guides" / "multi_device.md")
  assert float(page["loss"]) < 0.8 * float(page["first_loss"])
  assert page["moved"] == 32768


def test_checkpointing_guide_names_the_param():
  """``na.check_checkpoint`` as the guide uses it: the checkpoint fits its
  own optimizer, and one with another density names the param."""
  page = run_page(DOCS / "guides" / "checkpointing.md")
  assert "param 'encoder'" in page["message"]
  assert "density" in page["message"]


def test_options_guide_new_rate_compiles_once():
  """The guide's claim: a strongly typed float32 rate reuses the compiled
  step; a Python float or a weakly typed array compiles it again."""
  page = run_page(DOCS / "guides" / "options.md")
  step, state, params, x = (
    page[name] for name in ("train_step", "state", "params", "x")
  )
  assert step._cache_size() == 1
  with jax.numpy_dtype_promotion("standard"):
    for rate in (4e-4, 3e-4):
      state.hyperparams["learning_rate"] = jnp.asarray(rate, jnp.float32)
      params, state = step(params, state, x)
    assert step._cache_size() == 1
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(3e-4)
    state.hyperparams["learning_rate"] = 2e-4  # a Python float
    params, state = step(params, state, x)
    assert step._cache_size() == 2
    state.hyperparams["learning_rate"] = jnp.asarray(1e-4)  # weakly typed
    params, state = step(params, state, x)
    assert step._cache_size() == 3


def github_anchor(heading: str) -> str:
  """The anchor GitHub (and MyST's heading anchors) give a heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def broken_links(page: pathlib.Path) -> list[str]:
  """Relative links of ``page`` whose file, or heading, does not exist."""
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
  broken = []
  for target in LINK.findall(text):
    if re.match(r"[a-z]+:", target):  # https:, mailto:
      continue
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
      broken.append(target)
    elif anchor and file.suffix == ".md":
      headings = re.findall(r"^#+ (.*)$", file.read_text(), re.MULTILINE)
      if anchor not in {github_anchor(h) for h in headings}:
        broken.append(target)
  return broken


@pytest.mark.parametrize(
  "page",
  [ROOT / "README.md", *PAGES],
  ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_resolve(page):
  assert not broken_links(page)


def test_link_check_can_fail(tmp_path):
  page = tmp_path / "page.md"
  (tmp_path / "there.md").write_text("# A heading\n")
  page.write_text(
    "[ok](there.md) [ok](there.md#a-heading) [web](https://x.org)\n"
    "[gone](missing.md) [bad anchor](there.md#nope)\n"
  )
  assert broken_links(page) == ["missing.md", "there.md#nope"]
