"""The seam between the transports and the domain backends.

A backend declares its YANG modules, RPC/action handlers keyed by schema path,
state providers keyed by subtree, and config hooks for the subtrees it owns.
Backends register themselves here; no transport imports them by name. A backend
refuses with an engine error (backends.engine.errors.EngineError).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from .devfs import DEFAULT_MAX_READ

log = logging.getLogger(__name__)


def xml_text(text: str) -> str:
    """Text escaped for an XML element's content."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def read_device_file(devfs, path: str, max_size: int | None = None, *, session) -> tuple[bytes, str]:
    """A file of the device filesystem, read as the session's user (session None: as the
    server itself), and its canonical name; a bad path or a refusal is a DevFSError."""
    user = None if session is None else session.username
    data = devfs.read_bytes(path, max_size=max_size or DEFAULT_MAX_READ, user=user)
    return data, devfs.device_path(devfs.resolve(path))


@dataclass
class Change:
    """One changed node in a commit: op is create, delete or replace (libyang diff terms)."""

    op: str
    path: str
    value: str | None = None


@dataclass
class ConfigDiff:
    changes: list[Change]
    old: Any  # libyang tree before (read-only), or None
    new: Any  # libyang tree after (read-only), or None

    def under(self, prefix: str) -> list[Change]:
        """Changes inside prefix, or to an ancestor of it (a created or deleted
        subtree is one change at its top)."""
        return [c for c in self.changes
                if c.path == prefix or c.path.startswith(prefix + "/") or prefix.startswith(c.path + "/")]


@dataclass
class Services:
    """What the server lends to backends."""

    state_dir: Path
    devfs: Any
    clock: Callable[[], Any]
    # device seconds per real second (`serve --clock-rate`): a backend's timers wait
    # real_seconds() of what they would wait on the device
    clock_rate: float = 1.0
    # raise a notification the backend's modules define: notify("/module:name", content),
    # the content as Python data in the shape yangcore.datatree describes
    notify: Callable[[str, dict], None] | None = None

    def real_seconds(self, device_seconds: float) -> float:
        return device_seconds / self.clock_rate


Handler = Callable[..., Any | Awaitable[Any]]


@dataclass
class Backend:
    name: str
    modules: tuple[str, ...] = ()
    # schema path -> handler(session, input as a dict) returning the output as Python
    # data (the output's children, named as in yangcore.datatree), or None for <ok/>
    rpcs: dict[str, Handler] = field(default_factory=dict)
    # subtree path -> callable() returning the state under it as Python data in the shape
    # yangcore.datatree describes, top-level names module-qualified
    # ({"trustplane-device:device": {"filesystem": {"used-files": 3, ...}}}), or None
    state: dict[str, Callable[[], dict | None]] = field(default_factory=dict)
    # config subtrees this backend validates/applies
    config: tuple[str, ...] = ()

    def validate(self, diff: ConfigDiff) -> None:
        """Raise an EngineError to refuse a change. Must not change anything."""

    def prepare(self, diff: ConfigDiff, writes) -> None:
        """Stage the files the change rewrites in writes (a datastore.Writes); the core
        renames them in with the datastore's own file once every write is ready.
        Raise an EngineError to refuse. Must change nothing else."""

    def apply(self, diff: ConfigDiff) -> None:
        """Make the change live, once its files are in place. Must not fail: whatever
        can fail belongs in validate or prepare."""

    def protect_secrets(self, tree) -> None:
        """Replace, in place, the clear-text secrets an edit brought into tree (any
        datastore) by their stored form, so that clear text is never stored or returned.
        Raise an EngineError for a secret that cannot be stored."""

    def stored_config(self) -> str | None:
        """Configuration the backend keeps in a store of its own (XML, a <config>'s
        children with nc:operation as needed). At start it is applied to running
        before anything else, so edits made to that store offline show up."""
        return None

    def close(self) -> None:
        pass


Factory = Callable[[Services], Backend]
_registry: dict[str, Factory] = {}


def register(name: str):
    def deco(factory: Factory) -> Factory:
        _registry[name] = factory
        return factory
    return deco


def registered() -> dict[str, Factory]:
    return dict(_registry)
