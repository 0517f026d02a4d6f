"""The PKI state on disk (STATE_DIR/pki/state.json): each trustpoint's CA and router
certificates, pending and written requests, the downloaded trustpool and the expiry alerts
already raised. Changes are made on a copy and swapped in after an atomic write."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from backends.engine.errors import EngineError
from yangcore.datastore import atomic_write


def _empty() -> dict:
    return {"trustpoints": {}, "trustpool": {"downloaded": [], "source": None, "last-update": None,
                                             "last-attempt": None, "last-error": None}, "alerts": {}}


class PkiStore:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else _empty()

    def copy(self) -> dict:
        return copy.deepcopy(self.data)

    def trustpoint(self, name: str) -> dict:
        """A trustpoint's record (empty when it has no certificates)."""
        return self.data["trustpoints"].get(name) or {}

    def commit(self, data: dict) -> None:
        try:
            atomic_write(self.path, json.dumps(data, indent=1).encode(), mode=0o600)
        except OSError as exc:
            raise EngineError("storage-failed", f"cannot write the PKI state: {exc.strerror}") from None
        self.data = data
