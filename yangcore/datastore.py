"""Datastores as libyang trees, with atomic persistence.

The binding's merge/validate keep the caller's node pointer even when libyang
inserts a new first sibling, so the tree operations here work on the raw
`struct lyd_node **` and always hand back the current first sibling.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import libyang
from _libyang import ffi, lib

from backends.engine.errors import EngineError

log = logging.getLogger(__name__)

Tree = libyang.DNode | None


class StorageError(EngineError):
    """A state file could not be written (a full or read-only disk): the change was
    refused and nothing of it is live."""

    def __init__(self, what: str, exc: OSError):
        super().__init__("storage-failed", f"cannot write {what}: {exc.strerror or exc}")


def _wrap(ctx, cdata) -> Tree:
    if cdata == ffi.NULL:
        return None
    first = lib.lyd_first_sibling(cdata)
    return libyang.DNode.new(ctx, first)


def free(tree: Tree) -> None:
    if tree is not None and tree.cdata is not None:
        lib.lyd_free_all(tree.cdata)
        tree.cdata = None


def duplicate(tree: Tree) -> Tree:
    if tree is None:
        return None
    out = ffi.new("struct lyd_node **")
    if lib.lyd_dup_siblings(tree.cdata, ffi.NULL, lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_FLAGS, out) != lib.LY_SUCCESS:
        raise tree.context.error("duplicate failed")
    return _wrap(tree.context, out[0])


def merge(ctx, target: Tree, source: Tree) -> Tree:
    """Merge source siblings into target; source is left as it is."""
    if source is None:
        return target
    node_p = ffi.new("struct lyd_node **")
    node_p[0] = target.cdata if target is not None else ffi.NULL
    if lib.lyd_merge_siblings(node_p, source.cdata, 0) != lib.LY_SUCCESS:
        raise ctx.error("merge failed")
    return _wrap(ctx, node_p[0])


def validate(ctx, tree: Tree, *, no_state: bool = True) -> Tree:
    """Validate the whole tree in place; adds implicit defaults. Raises YangError.

    With state (a <get> reply) only the modules that have data are validated:
    a reply need not carry every module's mandatory state."""
    node_p = ffi.new("struct lyd_node **")
    node_p[0] = tree.cdata if tree is not None else ffi.NULL
    flags = lib.LYD_VALIDATE_NO_STATE if no_state else lib.LYD_VALIDATE_PRESENT
    ret = lib.lyd_validate_all(node_p, ctx.cdata, flags, ffi.NULL)
    if ret != lib.LY_SUCCESS:
        raise ctx.error("validation failed")
    return _wrap(ctx, node_p[0])


def parse_config(ctx, xml: str | bytes, *, validate_now: bool) -> Tree:
    """Parse config data (no state allowed, unknown nodes refused)."""
    if not xml.strip():
        return validate(ctx, None) if validate_now else None
    if validate_now:
        tree = ctx.parse_data_mem(xml, "xml", strict=True, no_state=True)
        return _wrap(ctx, tree.cdata) if tree is not None else validate(ctx, None)
    tree = ctx.parse_data_mem(xml, "xml", strict=True, no_state=True, parse_only=True)
    return None if tree is None else _wrap(ctx, tree.cdata)


def to_xml(tree: Tree, *, defaults: str = "explicit") -> str:
    """Serialize siblings. defaults: explicit, report-all, trim."""
    if tree is None:
        return ""
    flags = lib.LYD_PRINT_WITHSIBLINGS | lib.LYD_PRINT_SHRINK
    flags |= {
        "explicit": lib.LYD_PRINT_WD_EXPLICIT,
        "report-all": lib.LYD_PRINT_WD_ALL,
        "report-all-tagged": lib.LYD_PRINT_WD_ALL_TAG,
        "trim": lib.LYD_PRINT_WD_TRIM,
    }[defaults]
    out = ffi.new("char **")
    if lib.lyd_print_mem(out, tree.cdata, lib.LYD_XML, flags) != lib.LY_SUCCESS:
        raise tree.context.error("print failed")
    try:
        return ffi.string(out[0]).decode() if out[0] != ffi.NULL else ""
    finally:
        lib.free(out[0])


def data_path(node) -> str:
    """libyang's path of a `struct lyd_node *` (module names where the module changes)."""
    raw = lib.lyd_path(node, lib.LYD_PATH_STD, ffi.NULL, 0)
    try:
        return ffi.string(raw).decode()
    finally:
        lib.free(raw)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """temp file + fsync + rename + directory fsync: old or new content, never a mix.
    Raises OSError; then the file is as it was and no temp file is left."""
    tmp = _stage(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _drop(tmp)
        raise
    sync_dir(path.parent)


def _stage(path: Path, data: bytes, mode: int) -> str:
    """A synced temp file beside path holding data: where a full or read-only disk shows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _drop(tmp)
        raise
    return tmp


def _drop(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove the temp file %s: %s", tmp, exc.strerror)


def sync_dir(directory: Path) -> None:
    """After the rename the file holds the new content, which is what memory must match:
    a failed directory sync only risks the rename at a power loss, so it is logged, not raised."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        log.warning("cannot sync the directory %s: %s", directory, exc.strerror)


class Writes:
    """Files replaced together. write() puts each new content in a synced temp file beside
    its file, where a full or read-only disk shows; commit() then renames them all in
    (no renaming needs space). A failure before commit() leaves every file as it was."""

    def __init__(self):
        self._staged: list[tuple[Path, str, str]] = []  # (file, temp file, what it holds)
        self._removed: list[tuple[Path, str]] = []

    def write(self, path: Path, data: bytes, what: str, mode: int = 0o600) -> None:
        """Stage path's new content; `what` names it in the StorageError a failure raises."""
        try:
            self._staged.append((path, _stage(path, data, mode), what))
        except OSError as exc:
            raise StorageError(what, exc) from None

    def remove(self, path: Path, what: str) -> None:
        self._removed.append((path, what))

    def commit(self) -> None:
        dirs = set()
        try:
            while self._staged:
                path, tmp, what = self._staged[0]
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise StorageError(what, exc) from None
                self._staged.pop(0)
                dirs.add(path.parent)
            while self._removed:
                path, what = self._removed[0]
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    raise StorageError(what, exc) from None
                self._removed.pop(0)
                dirs.add(path.parent)
        finally:
            self.discard()
            for d in dirs:
                sync_dir(d)

    def discard(self) -> None:
        for _path, tmp, _what in self._staged:
            _drop(tmp)
        self._staged, self._removed = [], []


class Datastore:
    """One configuration datastore: a validated libyang tree, optionally persisted."""

    def __init__(self, ctx, name: str, path: Path | None = None):
        self.ctx = ctx
        self.name = name
        self.path = path
        self.tree: Tree = None

    def load(self) -> None:
        xml = self.path.read_text() if self.path is not None and self.path.exists() else ""
        self.replace(parse_config(self.ctx, xml, validate_now=True))

    def replace(self, tree: Tree, *, persist: bool = False) -> None:
        """Make tree the content; with persist it is written first, and a failed
        write (StorageError) leaves the datastore as it was."""
        if persist:
            writes = Writes()
            self.stage(tree, writes)
            writes.commit()
        old, self.tree = self.tree, tree
        if old is not None and (tree is None or old.cdata != tree.cdata):
            free(old)

    def copy(self) -> Tree:
        return duplicate(self.tree)

    def stage(self, tree: Tree, writes: Writes) -> None:
        """Stage tree as the datastore's file (nothing for one kept in memory only)."""
        if self.path is not None:
            writes.write(self.path, to_xml(tree).encode(), f"the {self.name} configuration")
