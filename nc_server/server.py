"""Server-wide state: the schema context, datastores, locks, sessions, backends and commit."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import libyang
from _libyang import ffi, lib

from . import datastore, datatree, netconf_acm, netconf_monitoring, notifications, xmlsafe
from .backend import Backend, BackendError, Change, ConfigDiff, Services
from .confirmed_commit import ConfirmedCommit
from .edit import apply_edit
from .errors import NC_NS, RpcError
from .framing import DEFAULT_MAX_MESSAGE
from .schema import build_context, to_rpc_errors
from .yang_library import MODULES_STATE, YANG_LIBRARY, YangLibrary

log = logging.getLogger(__name__)

BASE_CAPABILITIES = (
    "urn:ietf:params:netconf:base:1.0",
    "urn:ietf:params:netconf:base:1.1",
    "urn:ietf:params:netconf:capability:writable-running:1.0",
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:startup:1.0",
    "urn:ietf:params:netconf:capability:xpath:1.0",
    "urn:ietf:params:netconf:capability:notification:1.0",
    "urn:ietf:params:netconf:capability:interleave:1.0",
    "urn:ietf:params:netconf:capability:with-defaults:1.0?basic-mode=explicit"
    "&also-supported=report-all,report-all-tagged,trim",
)


@dataclass
class Limits:
    max_message: int = DEFAULT_MAX_MESSAGE
    hello_timeout: float = 60.0
    idle_timeout: float = 3600.0
    max_sessions: int = 64
    max_sessions_per_user: int = 8  # the recovery user has no such limit
    admin_sessions: int = 2  # of max_sessions, kept for the recovery user


class Server:
    def __init__(self, state_dir: Path, backends: list[Backend], services: Services,
                 limits: Limits | None = None, extra_yang_dirs: list[Path] = (),
                 replay_size: int = notifications.DEFAULT_REPLAY_SIZE,
                 notification_queue: int = notifications.DEFAULT_QUEUE_SIZE):
        self.state_dir = state_dir
        self.services = services
        self.limits = limits or Limits()
        self.backends = backends
        modules = [m for b in backends for m in b.modules]
        # modules found in extra directories are served as plain configuration
        modules += sorted({f.name.split("@")[0].removesuffix(".yang")
                           for d in extra_yang_dirs for f in Path(d).glob("*.yang")})
        self.ctx = build_context(modules, list(extra_yang_dirs))
        self.rpc_handlers = {path: (b, h) for b in backends for path, h in b.rpcs.items()}
        self.rpc_handlers[netconf_monitoring.GET_SCHEMA] = (
            None, lambda session, params: netconf_monitoring.get_schema(self, params))
        ds_dir = state_dir / "datastore"
        self.running = datastore.Datastore(self.ctx, "running", ds_dir / "running.xml")
        self.startup = datastore.Datastore(self.ctx, "startup", ds_dir / "startup.xml")
        self.candidate = datastore.Datastore(self.ctx, "candidate")
        self.candidate_dirty = False
        self.locks: dict[str, int] = {}
        self.lock_times: dict[str, float] = {}
        self.sessions: dict = {}
        self._next_sid = 1
        self.confirmed = ConfirmedCommit(ds_dir / "confirmed-commit.json", self._confirmed_rollback)
        self.notifications = notifications.Notifications(self, state_dir / "notifications", replay_size,
                                                         notification_queue)
        services.notify = self.notify_data
        self.acm = netconf_acm.AccessControl(self)
        self.stats = netconf_monitoring.Statistics(time.time())
        self.schemas = netconf_monitoring.Schemas(self.ctx)
        self.yang_library = YangLibrary(self.ctx)
        self.capabilities = [*BASE_CAPABILITIES, *self.yang_library.capabilities(), *self._module_capabilities()]
        # state providers by subtree: the server's own, then the backends'
        self.state_providers = {
            netconf_monitoring.STATE: lambda: netconf_monitoring.state(self),
            YANG_LIBRARY: self.yang_library.state,
            MODULES_STATE: self.yang_library.state,
            notifications.STREAMS_PATH: self.notifications.streams_xml,
            netconf_acm.NACM: self.acm.state_xml,
        }
        for b in backends:
            self.state_providers.update(b.state)

    # -- start / stop --------------------------------------------------------
    def load(self) -> None:
        self.startup.load()
        if self.running.path.exists() or not self.startup.path.exists():
            self.running.load()
        else:
            # first start after a startup was saved: boot from it (RFC 6241 §8.7)
            self.running.replace(self.startup.copy(), persist=True)
        self._load_stored_config()
        self._protect_stored_secrets()
        nacm = self.running.tree.find_path(netconf_acm.NACM) if self.running.tree is not None else None
        if nacm is None or nacm.cdata.flags & lib.LYD_DEFAULT:  # never configured: a fresh device
            self._merge_into_running(netconf_acm.DEFAULT_POLICY)
        self.candidate.replace(self.running.copy())
        self._apply_to_backends(ConfigDiff(self._changes(None, self.running.tree), None, self.running.tree))

    def _load_stored_config(self) -> None:
        for b in self.backends:
            xml = b.stored_config()
            if xml is not None:
                self._merge_into_running(xml)

    def _protect_stored_secrets(self) -> None:
        """Clear-text secrets that an older version stored are replaced by their stored form."""
        for store in (self.running, self.startup):
            if store.tree is None:
                continue
            tree = store.copy()
            self.protect_secrets(tree)
            if self._changes(store.tree, tree):
                log.warning("%s: clear-text secrets replaced by their stored form", store.name)
                store.replace(tree, persist=True)
            else:
                datastore.free(tree)

    def _merge_into_running(self, xml: str) -> None:
        """At start: edit running with a <config>'s children (nc:operation allowed)."""
        config = xmlsafe.parse(f'<config xmlns="{NC_NS}">{xml}</config>'.encode())
        tree, errors = apply_edit(self.ctx, self.running.copy(), config)
        if errors:
            datastore.free(tree)
            raise errors[0]
        tree = self.validate_tree(tree)
        # nothing new, nothing written: a start on a full or read-only disk still serves
        self.running.replace(tree, persist=bool(self._changes(self.running.tree, tree)))

    def restore_confirmed(self) -> None:
        self.confirmed.restore()

    def close(self) -> None:
        # running is on disk already: every change is written before it goes live
        for b in self.backends:
            b.close()

    def admission(self, username: str) -> str | None:
        """Why a new session for username is refused, or None. The recovery user may use
        every slot; other users the ones not kept for it, each at most its share."""
        lim = self.limits
        total = len(self.sessions)
        if total >= lim.max_sessions:
            return f"{total} sessions open, the most the server allows"
        if username == self.acm.recovery_user:
            return None
        if total >= lim.max_sessions - lim.admin_sessions:
            return f"{total} sessions open; the last {lim.admin_sessions} are kept for {self.acm.recovery_user}"
        mine = sum(1 for s in self.sessions.values() if s.username == username)
        if mine >= lim.max_sessions_per_user:
            return f"user {username} has {mine} sessions open, the most one user may have"
        return None

    def new_session_id(self) -> int:
        sid = self._next_sid
        self._next_sid += 1
        return sid

    # -- capabilities --------------------------------------------------------
    def _module_capabilities(self) -> list[str]:
        caps = []
        idx = ffi.new("uint32_t *")
        mod = lib.ly_ctx_get_module_iter(self.ctx.cdata, idx)
        while mod != ffi.NULL:
            if mod.implemented:
                name = ffi.string(mod.name).decode()
                uri = f"{ffi.string(mod.ns).decode()}?module={name}"
                if mod.revision != ffi.NULL:
                    uri += f"&revision={ffi.string(mod.revision).decode()}"
                feats = self.ctx.get_module(name).features()
                enabled = [f.name() for f in feats if f.state()]
                if enabled:
                    uri += "&features=" + ",".join(enabled)
                caps.append(uri)
            mod = lib.ly_ctx_get_module_iter(self.ctx.cdata, idx)
        return caps

    # -- datastores ----------------------------------------------------------
    def datastore(self, name: str) -> datastore.Datastore:
        return {"running": self.running, "candidate": self.candidate, "startup": self.startup}[name]

    def check_writable(self, name: str, sid: int) -> None:
        holder = self.locks.get(name)
        if holder is not None and holder != sid:
            raise RpcError("in-use", f"the {name} datastore is locked by session {holder}",
                           info=[("session-id", str(holder))])

    def validate_tree(self, tree: datastore.Tree) -> datastore.Tree:
        try:
            return datastore.validate(self.ctx, tree)
        except libyang.LibyangError as exc:
            raise to_rpc_errors(exc, default_tag="operation-failed") from None

    def _changes(self, old: datastore.Tree, new: datastore.Tree) -> list[Change]:
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

    def commit_tree(self, new: datastore.Tree, target: datastore.Datastore, session=None,
                    writes: datastore.Writes | None = None) -> None:
        """The config pipeline: validate, backends validate; then every file the change
        rewrites (target's, the backends', any the caller staged in `writes`) is written
        aside and, once all are written, renamed in; only then the change goes live:
        backends apply, swap, and announce (netconf-config-change, by `session` or else
        the server).

        `new` is consumed. If anything refuses, nothing changed, on disk or in memory."""
        writes = writes or datastore.Writes()
        touched = []
        try:
            new = self.validate_tree(new)
            changes = self._changes(target.tree, new)
            diff = ConfigDiff(changes, target.tree, new)
            if target is self.running:
                touched = [b for b in self.backends if _touches(b, diff)]
                for b in touched:
                    b.validate(diff)
                for b in touched:
                    b.prepare(diff, writes)
            target.stage(new, writes)
            writes.commit()
        except BackendError as exc:
            writes.discard()
            datastore.free(new)
            raise RpcError(exc.tag, exc.message, app_tag=exc.app_tag, path=exc.path) from None
        except BaseException:
            writes.discard()
            datastore.free(new)
            raise
        for b in touched:
            b.apply(diff)
        target.replace(new)
        if changes:
            edits = []
            for path, op in notifications.summarize([(c.path, c.op) for c in changes]):
                text, mods = notifications.xml_instance_id(path)
                edits.append((text, op, {m: self.ctx.namespace_of(m) for m in mods}))
            self.notify(notifications.config_change(session, target.name, edits))

    def protect_secrets(self, tree: datastore.Tree) -> None:
        """Every backend's protect_secrets on an edited tree; frees the tree when one refuses."""
        try:
            for b in self.backends:
                b.protect_secrets(tree)
        except BaseException:
            datastore.free(tree)
            raise

    def notify(self, body: str) -> None:
        """Raise a notification (one element, validated against its schema first)."""
        self.notifications.publish(body)

    def notify_data(self, path: str, data: dict) -> None:
        """Raise a backend's notification, given as its path and its content's data."""
        try:
            body = datatree.notification(self.ctx, path, data)
        except datatree.DataError as exc:
            log.error("notification %s dropped, it does not match its schema: %s", path, exc)
            return
        self.notify(body)

    def _apply_to_backends(self, diff: ConfigDiff) -> None:
        """At start: bring the backends' files and state in line with running."""
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

    def _confirmed_rollback(self, backup_xml: str, reason: str, writes: datastore.Writes) -> None:
        tree = datastore.parse_config(self.ctx, backup_xml, validate_now=False)
        self.commit_tree(tree, self.running, writes=writes)
        log.warning("confirmed commit rolled back (%s)", reason)
        if reason in ("timeout", "session-end"):
            self.notify(notifications.confirmed_commit(None, "timeout" if reason == "timeout" else "cancel", None))
        if not self.candidate_dirty:
            self.candidate.replace(self.running.copy())

    def end_session(self, sid: int) -> None:
        for name, holder in list(self.locks.items()):
            if holder == sid:
                del self.locks[name]
                self.lock_times.pop(name, None)
                if name == "candidate":
                    self.discard_candidate()
        self.confirmed.session_ended(sid)
        self.notifications.session_ended(sid)
        self.sessions.pop(sid, None)

    def discard_candidate(self) -> None:
        self.candidate.replace(self.running.copy())
        self.candidate_dirty = False


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
