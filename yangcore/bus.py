"""The notification bus: what happened in the core and the backends, for every transport.

Events are checked against the schema once, here; each transport subscribes and
turns them into its own messages (NETCONF: <notification>s with a replay log).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import libyang

from . import datatree
from .backend import Change

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigChanged:
    """A commit changed a datastore."""

    datastore: str
    changes: list[Change]
    origin: Any  # the transport's session that made the change, or None: the server itself


@dataclass(frozen=True)
class Notification:
    """A YANG notification: one XML element, valid against the schema."""

    body: str


Event = ConfigChanged | Notification


class Bus:
    def __init__(self, ctx):
        self.ctx = ctx
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, deliver: Callable[[Event], None]) -> None:
        self._subscribers.append(deliver)

    def notify(self, body: str) -> None:
        """Raise a notification; one that does not match its schema is logged and dropped."""
        try:
            self.ctx.parse_op_mem("xml", body, libyang.DataType.NOTIF_YANG).free()
        except libyang.LibyangError as exc:
            log.error("notification dropped, it does not match its schema: %s", exc)
            return
        self.publish(Notification(body))

    def notify_data(self, path: str, data: dict) -> None:
        """Raise a notification given as its path and its content's data (the shape
        yangcore.datatree describes); one that does not match its schema is logged and dropped."""
        try:
            body = datatree.notification(self.ctx, path, data)
        except datatree.DataError as exc:
            log.error("notification %s dropped, it does not match its schema: %s", path, exc)
            return
        self.publish(Notification(body))

    def publish(self, event: Event) -> None:
        for deliver in self._subscribers:
            deliver(event)
