"""Paths under a directory that never follow a symbolic link.

Each component is opened relative to its parent's descriptor with O_NOFOLLOW, so a
link placed in the tree (by a package, or by anyone who can write there) can neither
lead a write, a mode change or a read out of it, nor be swapped in between a check
and its use.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Iterator

from ..errors import EngineError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathBlocked(EngineError):
    """A component of a path is a symbolic link (kind "link") or not a directory."""

    def __init__(self, path: str, kind: str):
        super().__init__("path-blocked", f"{path} is {'a symbolic link' if kind == 'link' else 'not a directory'}")
        self.path, self.kind = path, kind


def parts(path: str) -> list[str]:
    """The components of an absolute path as installed; "." and ".." are refused."""
    comps = [c for c in path.split("/") if c]
    if any(c in (".", "..") for c in comps):
        raise ValueError(f"unsafe path {path!r}")
    return comps


def open_dir(base_fd: int, comps: list[str], create_mode: int | None = None,
             created: list[str] | None = None) -> int:
    """A descriptor of base/comps. Missing directories are made with create_mode when it is
    given (and their paths appended to created); otherwise FileNotFoundError."""
    fd = os.dup(base_fd)
    try:
        for i, name in enumerate(comps):
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                os.mkdir(name, create_mode, dir_fd=fd)
                if created is not None:
                    created.append("/" + "/".join(comps[:i + 1]))
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                kind = "link" if stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode) else "file"
                raise PathBlocked("/" + "/".join(comps[:i + 1]), kind) from None
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def lstat(base_fd: int, comps: list[str]) -> os.stat_result | None:
    """lstat of base/comps, None when it or a directory on the way is missing."""
    if not comps:
        return os.fstat(base_fd)
    try:
        fd = open_dir(base_fd, comps[:-1])
    except (FileNotFoundError, PathBlocked):
        return None
    try:
        return os.lstat(comps[-1], dir_fd=fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


def walk(base_fd: int, top: list[str]) -> Iterator[str]:
    """The absolute paths of everything under base/top, top excluded, never entering a
    link. Nothing when top is missing, a link or not a directory."""
    pending = [top]
    while pending:
        comps = pending.pop()
        try:
            fd = open_dir(base_fd, comps)
        except (FileNotFoundError, PathBlocked):
            continue  # gone, or replaced by a link, since its parent was read
        try:
            with os.scandir(fd) as entries:
                for e in entries:
                    yield "/" + "/".join([*comps, e.name])
                    if e.is_dir(follow_symlinks=False):
                        pending.append([*comps, e.name])
        finally:
            os.close(fd)
