"""RFC 6241 §8.4 confirmed commit (:confirmed-commit:1.1) as a small state machine.

The backup is taken at the first confirmed commit and kept through follow-up
commits, so a rollback always returns to the configuration from before the
first one. With persist, the pending state is saved to disk and survives a restart.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from backends.engine.errors import EngineError
from yangcore.datastore import Writes

from .errors import RpcError

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 600
RETRY_DELAY = 10.0  # seconds before a rollback the disk refused is tried again


@dataclass
class Pending:
    backup_xml: str
    deadline: float  # wall-clock time.time()
    session_id: int
    persist: str | None


class ConfirmedCommit:
    def __init__(self, state_path: Path | None, rollback):
        """rollback(backup_xml, reason, writes) restores running, committing writes with it;
        called on timeout, session end or restart. It raises an EngineError when refused."""
        self.path = state_path
        self._rollback = rollback
        self.pending: Pending | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- queries used by commit/cancel-commit --------------------------------
    def check_access(self, session_id: int, persist_id: str | None, op: str, recovery: bool = False) -> None:
        """Raise unless this session (or holder of persist-id) may confirm/extend/cancel.
        recovery: the recovery user may cancel any pending confirmed commit without its
        persist-id, so no other user's commit can keep it from committing."""
        p = self.pending
        if p is None:
            if persist_id is not None:
                raise RpcError("invalid-value", "no confirmed commit is pending for this persist-id",
                               path="/nc:commit/nc:persist-id" if op == "commit" else None)
            return
        if recovery and op == "cancel-commit" and persist_id is None:
            return
        hint = " (the recovery user may cancel it with <cancel-commit/>)"
        if p.persist is not None:
            if persist_id is None:
                raise RpcError("in-use", "a persistent confirmed commit is pending; give its persist-id" +
                               (hint if recovery else ""), app_tag="confirmed-commit-pending")
            if persist_id != p.persist:
                raise RpcError("invalid-value", "the persist-id does not match the pending confirmed commit",
                               app_tag="wrong-persist-id")
        elif persist_id is not None:
            raise RpcError("invalid-value", "the pending confirmed commit has no persist-id",
                           app_tag="wrong-persist-id")
        elif session_id != p.session_id:
            raise RpcError("in-use", f"a confirmed commit by session {p.session_id} is pending" +
                           (hint if recovery else ""), app_tag="confirmed-commit-pending",
                           info=[("session-id", str(p.session_id))])

    def stage_begin(self, backup_xml: str | None, session_id: int, timeout: int, persist: str | None,
                    writes: Writes) -> Pending:
        """The state a confirmed commit starts, or extends the pending one to (keeping its
        backup), staged in writes; it goes live with start() once the commit is through."""
        p = self.pending
        nxt = Pending(p.backup_xml if p is not None else backup_xml or "", time.time() + timeout, session_id,
                      persist)
        if self.path is not None:
            writes.write(self.path, json.dumps({"backup": nxt.backup_xml, "deadline": nxt.deadline,
                                                "persist": nxt.persist}).encode(), "the confirmed-commit state")
        return nxt

    def start(self, pending: Pending) -> None:
        self.pending = pending
        self._arm(pending.deadline - time.time())

    def stage_end(self, writes: Writes) -> None:
        """Stage the removal of the saved state: the commit that confirms or rolls back takes it along."""
        if self.path is not None:
            writes.remove(self.path, "the confirmed-commit state")

    def end(self) -> None:
        """The pending commit was confirmed or rolled back (its file went with that commit)."""
        self._clear()

    def session_ended(self, session_id: int) -> None:
        p = self.pending
        if p is not None and p.persist is None and p.session_id == session_id:
            log.info("session %d ended with a confirmed commit pending: rolling back", session_id)
            self._fire("session-end")

    def restore(self) -> None:
        """At start: re-arm a persisted confirmed commit, or roll back an unfinished one."""
        if self.path is None or not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        self.pending = Pending(data["backup"], data["deadline"], 0, data.get("persist"))
        if self.pending.persist is None:
            self._fire("restart")
        else:
            self._arm(self.pending.deadline - time.time())

    # -- internals -----------------------------------------------------------
    def _arm(self, delay: float, reason: str = "timeout") -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_event_loop().call_later(max(0.0, delay), self._fire, reason)

    def _fire(self, reason: str) -> None:
        writes = Writes()
        self.stage_end(writes)
        try:
            self._rollback(self.pending.backup_xml, reason, writes)
        except EngineError as exc:
            # still pending, on disk too: a restart rolls back as well
            log.error("confirmed commit: cannot roll back (%s), trying again in %g s: %s", reason, RETRY_DELAY,
                      exc.message)
            self._arm(RETRY_DELAY, reason)
            return
        self._clear()

    def _clear(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pending = None
