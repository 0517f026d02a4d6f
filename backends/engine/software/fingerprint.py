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

from . import rootfs
from ..errors import EngineError

EMPTY = hashlib.sha256(b"").hexdigest()
MAX_WALK = 200_000  # entries visited under a package's directories
_BUF = 1 << 20


class FingerprintError(EngineError):
    def __init__(self, message: str):
        super().__init__("fingerprint-failed", message)


def line(path: str, mode: int, digest: str) -> bytes:
    return f"{digest} {mode:06o} {path}\n".encode()


def combine(records: Iterable[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for path, mode, digest in sorted(records, key=lambda r: r[0].encode()):
        h.update(line(path, mode, digest))
    return h.hexdigest()


def file_record(root_fd: int, path: str) -> tuple[str, int, str]:
    """(path, mode, digest) of an installed file under root, read without following links:
    a path that leads through a link is as missing as one that does not exist."""
    comps = rootfs.parts(path)
    if not comps:
        return path, os.fstat(root_fd).st_mode, EMPTY
    try:
        parent = rootfs.open_dir(root_fd, comps[:-1])
    except (FileNotFoundError, rootfs.PathBlocked):
        return path, 0, EMPTY
    name = comps[-1]
    try:
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return path, 0, EMPTY
        if stat.S_ISLNK(st.st_mode):
            return path, st.st_mode, hashlib.sha256(os.fsencode(os.readlink(name, dir_fd=parent))).hexdigest()
        if not stat.S_ISREG(st.st_mode):
            return path, st.st_mode, EMPTY
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # replaced since the lstat
            return path, st.st_mode, EMPTY
        return path, st.st_mode, hashlib.file_digest(f, "sha256").hexdigest()


def tree_paths(root_fd: int, files: Iterable[str], dirs: Iterable[str], foreign: set[str]) -> list[str]:
    """The package's files, plus everything now under its directories that no other package owns."""
    paths = set(files)
    budget = MAX_WALK
    for d in dirs:
        for p in rootfs.walk(root_fd, rootfs.parts(d)):
            budget -= 1
            if budget < 0:
                raise FingerprintError(f"more than {MAX_WALK} entries under the package directories")
            if p not in foreign:
                paths.add(p)
    return list(paths)  # combine() puts them in fingerprint order


def run_time(root: Path, files: Iterable[str], dirs: Iterable[str], foreign: set[str] = frozenset(),
             workers: int = 2) -> str:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        paths = tree_paths(root_fd, files, dirs, foreign)
        # hashlib and file reads release the GIL, so two threads use both cores
        with ThreadPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(lambda p: file_record(root_fd, p), paths, chunksize=16))
    finally:
        os.close(root_fd)
    return combine(records)
