"""The pretrained MiniLM loader (examples/minilm.py) and its package cache."""

import io
import pathlib
import shutil
import sys
import tarfile
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(
  0, str(pathlib.Path(__file__).resolve().parents[1] / "examples")
)

import minilm  # noqa: E402
import movie_reviews  # noqa: E402
import package_cache  # noqa: E402


@pytest.fixture(scope="module")
def pretrained():
  return minilm.load_minilm()


def test_embeddings_match_published_similarities(pretrained):
  """sentence-transformers' model card: 0.6660, 0.1046, 0.1411."""
  model, tokenizer = pretrained
  sentences = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
  ]
  tokens = minilm.tokenize(tokenizer, sentences, max_len=32)
  embeddings = np.asarray(
    model(jnp.asarray(tokens.ids), jnp.asarray(tokens.mask)), np.float64
  )
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  similarity = unit @ unit.T
  np.testing.assert_allclose(
    [similarity[0, 1], similarity[0, 2], similarity[1, 2]],
    [0.6660, 0.1046, 0.1411],
    atol=1e-3,
  )


def test_padding_does_not_change_embeddings(pretrained):
  model, tokenizer = pretrained
  short = minilm.tokenize(tokenizer, ["A fine film."], max_len=8)
  long = minilm.tokenize(tokenizer, ["A fine film."], max_len=40)
  assert short.mask.sum() == long.mask.sum() == 6  # [CLS] a fine film . [SEP]
  np.testing.assert_allclose(
    model(jnp.asarray(short.ids), jnp.asarray(short.mask)),
    model(jnp.asarray(long.ids), jnp.asarray(long.mask)),
    atol=1e-5,
  )


def test_every_parameter_is_loaded(pretrained):
  model, _ = pretrained
  fresh = minilm.BertEncoder(minilm.BertConfig(), minilm.nnx.Rngs(0))
  loaded = dict(minilm.nnx.to_flat_state(minilm.nnx.state(model)))
  for path, variable in minilm.nnx.to_flat_state(minilm.nnx.state(fresh)):
    if path[-1] == "kernel" or path[-1] == "embedding":
      assert not np.array_equal(variable[...], loaded[path][...]), path


def test_movie_review_splits():
  splits = movie_reviews.load_movie_reviews(val=1000, test=2000)
  sizes = [len(part.sentences) for part in splits]
  assert sizes == [7568, 1000, 2000]  # 10,605 rows less 37 neutral
  everything = [s for part in splits for s in part.sentences]
  assert len(set(everything)) > 0.99 * len(everything)
  for part in splits:
    assert 0.45 < part.labels.mean() < 0.55
  # The split is fixed: a second call gives the same sentences.
  again = movie_reviews.load_movie_reviews(val=1000, test=2000)
  assert again.test.sentences == splits.test.sentences


def test_fetch_rejects_a_changed_file(tmp_path, monkeypatch):
  archive = tmp_path / "thing-1.0-py3-none-any.whl"
  with zipfile.ZipFile(archive, "w") as zipped:
    zipped.writestr("thing/data.txt", "not what was pinned")
  monkeypatch.setenv("NANOADAM_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(package_cache, "_download", lambda *_: archive)
  package = package_cache.Package(
    "thing==1.0",
    source=False,
    files={"data.txt": package_cache.PackagedFile("thing/data.txt", "0" * 64)},
  )
  with pytest.raises(RuntimeError, match="SHA-256"):
    package_cache.fetch(package)
  assert not (tmp_path / "cache" / "thing-1.0" / "data.txt").exists()


def test_fetch_reads_nested_archives_and_caches(tmp_path, monkeypatch):
  inner = io.BytesIO()
  with tarfile.open(fileobj=inner, mode="w:gz") as tarred:
    info = tarfile.TarInfo("inner/data.txt")
    info.size = 5
    tarred.addfile(info, io.BytesIO(b"hello"))
  archive = tmp_path / "thing-1.0.tar.gz"
  with tarfile.open(archive, "w:gz") as tarred:
    info = tarfile.TarInfo("thing-1.0/data.tar.gz")
    info.size = len(inner.getvalue())
    tarred.addfile(info, io.BytesIO(inner.getvalue()))
  monkeypatch.setenv("NANOADAM_CACHE", str(tmp_path / "cache"))
  calls = []
  monkeypatch.setattr(
    package_cache, "_download", lambda *_: calls.append(1) or archive
  )
  sha = package_cache.sha256_of(b"hello")
  package = package_cache.Package(
    "thing==1.0",
    source=True,
    files={
      "data.txt": package_cache.PackagedFile(
        "thing-1.0/data.tar.gz!inner/data.txt", sha
      )
    },
  )
  for _ in range(2):
    path = package_cache.fetch(package)["data.txt"]
    assert path.read_bytes() == b"hello"
  assert calls == [1]  # the second call reads the cache


def test_concurrent_fetches_share_no_download_folder(tmp_path, monkeypatch):
  """Two fetches at once (test workers on a fresh machine) each download
  into a folder of their own, deleted afterwards, and leave no partial
  file: here the second runs inside the first's download."""
  archive = tmp_path / "thing-1.0.tar.gz"
  with tarfile.open(archive, "w:gz") as tarred:
    info = tarfile.TarInfo("thing-1.0/data.txt")
    info.size = 5
    tarred.addfile(info, io.BytesIO(b"hello"))
  monkeypatch.setenv("NANOADAM_CACHE", str(tmp_path / "cache"))
  package = package_cache.Package(
    "thing==1.0",
    source=True,
    files={
      "data.txt": package_cache.PackagedFile(
        "thing-1.0/data.txt", package_cache.sha256_of(b"hello")
      )
    },
  )
  folders = []

  def download(_, into):
    folders.append(into)
    if len(folders) == 1:
      package_cache.fetch(package)  # another process, as it were
    assert into.is_dir()  # not deleted by the other fetch
    return pathlib.Path(shutil.copy(archive, into))

  monkeypatch.setattr(package_cache, "_download", download)
  path = package_cache.fetch(package)["data.txt"]
  assert path.read_bytes() == b"hello"
  assert len(set(folders)) == 2, folders
  assert not any(folder.exists() for folder in folders)
  assert sorted(p.name for p in path.parent.iterdir()) == ["data.txt"]


def test_unfetchable_package_says_what_to_run(tmp_path, monkeypatch):
  monkeypatch.setenv("NANOADAM_CACHE", str(tmp_path))
  package = package_cache.Package(
    "nanoadam-jax-no-such-package-xyz==0.0.1", source=False, files={}
  )
  with pytest.raises(RuntimeError, match="pip download --no-deps"):
    package_cache._download(package, tmp_path)
