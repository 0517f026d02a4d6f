"""The NETCONF server's state over the core: capabilities, locks, sessions, the candidate's
state, confirmed commits and notifications; the core holds the schema, datastores and commit."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from _libyang import ffi, lib

from yangcore import datastore
from yangcore.backend import Backend, Services
from yangcore.bus import Bus, ConfigChanged, Notification
from yangcore.commit import Configuration
from yangcore.nacm import NACM
from yangcore.schema import build_context

from . import netconf_acm, netconf_monitoring, notifications, xmlsafe
from .confirmed_commit import ConfirmedCommit
from .edit import apply_edit
from .errors import NC_NS, RpcError
from .framing import DEFAULT_MAX_MESSAGE
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
# Loaded whatever the backends declare: the base protocol needs them.
BASE_MODULES = ("ietf-netconf", "ietf-netconf-with-defaults", "ietf-netconf-monitoring", "notifications",
                "nc-notifications", "ietf-netconf-notifications", "ietf-netconf-acm")
# the features of modules whose features the server does not all implement (no :url)
FEATURES = {"ietf-netconf": ("writable-running", "candidate", "confirmed-commit", "rollback-on-error",
                             "validate", "startup", "xpath"),
            "ietf-system": ("authentication", "local-users")}


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
        self.ctx = build_context([*BASE_MODULES, *modules], list(extra_yang_dirs), FEATURES)
        self.rpc_handlers = {path: (b, h) for b in backends for path, h in b.rpcs.items()}
        self.rpc_handlers[netconf_monitoring.GET_SCHEMA] = (
            None, lambda session, params: netconf_monitoring.get_schema(self, params))
        ds_dir = state_dir / "datastore"
        self.bus = Bus(self.ctx)
        self.config = Configuration(self.ctx, backends, ds_dir, self.bus)
        self.running, self.startup, self.candidate = self.config.running, self.config.startup, self.config.candidate
        self.candidate_dirty = False
        self.locks: dict[str, int] = {}
        self.lock_times: dict[str, float] = {}
        self.sessions: dict = {}
        self._next_sid = 1
        self.confirmed = ConfirmedCommit(ds_dir / "confirmed-commit.json", self._confirmed_rollback)
        self.notifications = notifications.Notifications(self, state_dir / "notifications", replay_size,
                                                         notification_queue)
        services.notify = self.bus.notify_data
        self.bus.subscribe(self._on_event)
        self.acm = netconf_acm.NetconfAccessControl(self.ctx, self.running)
        self.stats = netconf_monitoring.Statistics(time.time())
        self.schemas = netconf_monitoring.Schemas(self.ctx)
        self.yang_library = YangLibrary(self.ctx)
        self.capabilities = [*BASE_CAPABILITIES, *self.yang_library.capabilities(), *self._module_capabilities()]
        # state providers by subtree: the server's own, then the backends'
        self.state_providers = {
            netconf_monitoring.STATE: lambda: netconf_monitoring.state(self),
            YANG_LIBRARY: self.yang_library.state,
            MODULES_STATE: self.yang_library.state,
            notifications.STREAMS_PATH: self.notifications.streams,
            NACM: self.acm.state,
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
        nacm = self.running.tree.find_path(NACM) if self.running.tree is not None else None
        if nacm is None or nacm.cdata.flags & lib.LYD_DEFAULT:  # never configured: a fresh device
            self._merge_into_running(netconf_acm.DEFAULT_POLICY)
        self.candidate.replace(self.running.copy())
        self.config.apply_to_backends()

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
            self.config.protect_secrets(tree)
            if self.config.changes(store.tree, tree):
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
        tree = self.config.validate(tree)
        # nothing new, nothing written: a start on a full or read-only disk still serves
        self.running.replace(tree, persist=bool(self.config.changes(self.running.tree, tree)))

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
        """A capability per implemented module, with its enabled features and the modules
        that deviate it (RFC 6020 §5.6.4)."""
        deviated_by = {m["name"]: [d["name"] for d in m.get("deviation", [])]
                       for m in self.yang_library.data["ietf-yang-library:modules-state"]["module"]}
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
                if deviated_by.get(name):
                    uri += "&deviations=" + ",".join(deviated_by[name])
                caps.append(uri)
            mod = lib.ly_ctx_get_module_iter(self.ctx.cdata, idx)
        return caps

    # -- datastores ----------------------------------------------------------
    def check_writable(self, name: str, sid: int) -> None:
        holder = self.locks.get(name)
        if holder is not None and holder != sid:
            raise RpcError("in-use", f"the {name} datastore is locked by session {holder}",
                           info=[("session-id", str(holder))])

    def notify(self, body: str) -> None:
        """Raise a notification (one element, validated against its schema first)."""
        self.bus.notify(body)

    def _on_event(self, event) -> None:
        """The core's events as NETCONF notifications."""
        if isinstance(event, Notification):
            self.notifications.publish(event.body)
        elif isinstance(event, ConfigChanged):
            edits = []
            for path, op in notifications.summarize([(c.path, c.op) for c in event.changes]):
                text, mods = notifications.xml_instance_id(path)
                edits.append((text, op, {m: self.ctx.namespace_of(m) for m in mods}))
            self.notify(notifications.config_change(event.origin, event.datastore, edits))

    def _confirmed_rollback(self, backup_xml: str, reason: str, writes: datastore.Writes) -> None:
        tree = datastore.parse_config(self.ctx, backup_xml, validate_now=False)
        self.config.commit(tree, self.running, writes=writes)
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

