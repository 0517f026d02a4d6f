"""RPM fingerprints: one SHA-256 digest over a package's files.

Each file gives one line, `<sha256> <mode> <path>\\n`:
- sha256: of the content for a regular file, of the target for a symbolic link,
  of nothing for a directory or any other type (64 lowercase hex digits);
- mode: st_mode, type bits included, as 6 octal digits (a missing file is 000000);
- path: the absolute path as installed.
The lines are sorted by path (bytes, as `LC_ALL=C sort`) and the fingerprint is the
SHA-256 of their concatenation. The install-time fingerprint is computed from
the package's payload, the run-time fingerprint from the files on disk now.
"""
from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

EMPTY = hashlib.sha256(b"").hexdigest()
MAX_WALK = 200_000  # entries visited under a package's directories
_BUF = 1 << 20


class FingerprintError(Exception):
    pass


def line(path: str, mode: int, digest: str) -> bytes:
    return f"{digest} {mode:06o} {path}\n".encode()


def combine(records: Iterable[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for path, mode, digest in sorted(records, key=lambda r: r[0].encode()):
        h.update(line(path, mode, digest))
    return h.hexdigest()


def file_record(root: Path, path: str) -> tuple[str, int, str]:
    """(path, mode, digest) of an installed file, read from under root without following links."""
    real = os.path.join(root, path.lstrip("/"))
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return path, 0, EMPTY
    if stat.S_ISLNK(st.st_mode):
        return path, st.st_mode, hashlib.sha256(os.fsencode(os.readlink(real))).hexdigest()
    if not stat.S_ISREG(st.st_mode):
        return path, st.st_mode, EMPTY
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        return path, st.st_mode, hashlib.file_digest(f, "sha256").hexdigest()


def tree_paths(root: Path, files: Iterable[str], dirs: Iterable[str], foreign: set[str]) -> list[str]:
    """The package's files, plus everything now under its directories that no other package owns."""
    paths = set(files)
    budget = MAX_WALK
    for d in dirs:
        top = os.path.join(root, d.lstrip("/"))
        for here, subdirs, names in os.walk(top):  # does not follow symbolic links
            budget -= len(subdirs) + len(names)
            if budget < 0:
                raise FingerprintError(f"more than {MAX_WALK} entries under the package directories")
            rel = "/" + os.path.relpath(here, root)
            for name in subdirs + names:
                p = os.path.join(rel, name)
                if p not in foreign:
                    paths.add(p)
    return list(paths)  # combine() puts them in fingerprint order


def run_time(root: Path, files: Iterable[str], dirs: Iterable[str], foreign: set[str] = frozenset(),
             workers: int = 2) -> str:
    paths = tree_paths(root, files, dirs, foreign)
    # hashlib and file reads release the GIL, so two threads use both cores
    with ThreadPoolExecutor(max_workers=workers) as pool:
        records = list(pool.map(lambda p: file_record(root, p), paths, chunksize=16))
    return combine(records)
