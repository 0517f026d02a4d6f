"""The base of the engine's typed errors: a stable code (the NETCONF error-app-tag), a
message for people, and the RFC 6241 error-tag the server should send."""
from __future__ import annotations


class EngineError(Exception):
    default_tag = "operation-failed"

    def __init__(self, code: str, message: str, tag: str | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.tag = tag or self.default_tag
