"""The one base of every domain error: a stable code (the NETCONF error-app-tag), a
message for people, the RFC 6241 error-tag a transport should send, and optionally the
data path of the node at fault. Engine, backends and the core raise it; each transport
turns it into its own wire error in one place."""
from __future__ import annotations

# the RFC 6241 Appendix A error-tags an application error may carry
TAGS = frozenset({
    "in-use", "invalid-value", "too-big", "missing-attribute", "bad-attribute", "unknown-attribute",
    "missing-element", "bad-element", "unknown-element", "unknown-namespace", "access-denied",
    "resource-denied", "rollback-failed", "data-exists", "data-missing", "operation-not-supported",
    "operation-failed"})


class EngineError(Exception):
    default_tag = "operation-failed"

    def __init__(self, code: str | None, message: str, tag: str | None = None, path: str | None = None):
        tag = tag or self.default_tag
        if tag not in TAGS:
            raise ValueError(f"unknown error-tag {tag}")
        super().__init__(message)
        self.code, self.message, self.tag, self.path = code, message, tag, path
