"""The device's configuration datastores and the one pipeline that changes them:
validate, the backends' validate and prepare, atomic persist, the backends' apply,
then a ConfigChanged event on the bus. Any transport commits through here."""
from __future__ import annotations

import logging
from pathlib import Path

import libyang
from _libyang import ffi, lib

from backends.engine.errors import EngineError

from . import datastore
from .backend import Backend, Change, ConfigDiff
from .bus import Bus, ConfigChanged

log = logging.getLogger(__name__)


class InvalidConfig(EngineError):
    """A configuration fails its schema (unique, must, leafref, mandatory …); `cause`
    is libyang's error with one item for each failure."""

    def __init__(self, cause: libyang.LibyangError):
        super().__init__(None, str(cause))
        self.cause = cause


class Configuration:
    """running and startup (persisted in `directory`) and candidate (in memory)."""

    def __init__(self, ctx, backends: list[Backend], directory: Path, bus: Bus):
        self.ctx = ctx
        self.backends = backends
        self.bus = bus
        self.running = datastore.Datastore(ctx, "running", directory / "running.xml")
        self.startup = datastore.Datastore(ctx, "startup", directory / "startup.xml")
        self.candidate = datastore.Datastore(ctx, "candidate")

    def datastore(self, name: str) -> datastore.Datastore:
        return {"running": self.running, "candidate": self.candidate, "startup": self.startup}[name]

    def validate(self, tree: datastore.Tree) -> datastore.Tree:
        """tree, validated (implicit defaults added); InvalidConfig when it is not valid."""
        try:
            return datastore.validate(self.ctx, tree)
        except libyang.LibyangError as exc:
            raise InvalidConfig(exc) from None

    def changes(self, old: datastore.Tree, new: datastore.Tree) -> list[Change]:
        out = ffi.new("struct lyd_node **")
        ret = lib.lyd_diff_siblings(old.cdata if old is not None else ffi.NULL,
                                    new.cdata if new is not None else ffi.NULL, 0, out)
        if ret != lib.LY_SUCCESS:
            raise self.ctx.error("diff failed")
        changes: list[Change] = []
        if out[0] == ffi.NULL:
            return changes
        diff = libyang.DNode.new(self.ctx, out[0])
        try:
            for root in _siblings(diff):
                _collect(root, "none", changes)
        finally:
            datastore.free(diff)
        return changes

    def commit(self, new: datastore.Tree, target: datastore.Datastore, origin=None,
               writes: datastore.Writes | None = None) -> None:
        """The config pipeline: validate, backends validate; then every file the change
        rewrites (target's, the backends', any the caller staged in `writes`) is written
        aside and, once all are written, renamed in; only then the change goes live:
        backends apply, swap, and a ConfigChanged by `origin` (a session, or None: the
        server) goes out on the bus.

        `new` is consumed. If anything refuses (an EngineError), nothing changed, on disk
        or in memory."""
        writes = writes or datastore.Writes()
        touched = []
        try:
            new = self.validate(new)
            changes = self.changes(target.tree, new)
            diff = ConfigDiff(changes, target.tree, new)
            if target is self.running:
                touched = [b for b in self.backends if _touches(b, diff)]
                for b in touched:
                    b.validate(diff)
                for b in touched:
                    b.prepare(diff, writes)
            target.stage(new, writes)
            writes.commit()
        except BaseException:
            writes.discard()
            datastore.free(new)
            raise
        for b in touched:
            b.apply(diff)
        target.replace(new)
        if changes:
            self.bus.publish(ConfigChanged(target.name, changes, origin))

    def protect_secrets(self, tree: datastore.Tree) -> None:
        """Every backend's protect_secrets on an edited tree; frees the tree when one refuses."""
        try:
            for b in self.backends:
                b.protect_secrets(tree)
        except BaseException:
            datastore.free(tree)
            raise

    def apply_to_backends(self) -> None:
        """At start: bring the backends' files and state in line with running."""
        diff = ConfigDiff(self.changes(None, self.running.tree), None, self.running.tree)
        touched = [b for b in self.backends if _touches(b, diff)]
        writes = datastore.Writes()
        try:
            for b in touched:
                b.prepare(diff, writes)
            writes.commit()
        except BaseException:
            writes.discard()
            raise
        for b in touched:
            b.apply(diff)


def _siblings(node):
    cur = node.cdata
    while cur != ffi.NULL:
        yield cur
        cur = cur.next


def _collect(node, inherited: str, out: list[Change]) -> None:
    op = inherited
    meta = node.meta
    while meta != ffi.NULL:
        if ffi.string(meta.name) == b"operation":
            op = ffi.string(meta.value.enum_item.name).decode() if meta.value.enum_item else op
        meta = meta.next
    if op in ("create", "delete", "replace"):
        path = datastore.data_path(node)
        value = None
        if node.schema.nodetype & (lib.LYS_LEAF | lib.LYS_LEAFLIST):
            value = ffi.string(lib.lyd_get_value(node)).decode()
        out.append(Change(op, path, value))
        if op in ("create", "delete"):
            return  # the subtree goes with it
    child = lib.lyd_child(node)
    while child != ffi.NULL:
        _collect(child, op if op == "none" else "none", out)
        child = child.next


def _touches(backend: Backend, diff: ConfigDiff) -> bool:
    return any(diff.under(p) for p in backend.config)
