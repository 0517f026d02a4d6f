"""RFC 6241 Appendix A rpc-errors, and their XML form."""
from __future__ import annotations

import re

from lxml import etree

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"

# error-tag -> error-types allowed for it by RFC 6241 Appendix A.
ERROR_TAGS = {
    "in-use": {"protocol", "application"},
    "invalid-value": {"protocol", "application"},
    "too-big": {"transport", "rpc", "protocol", "application"},
    "missing-attribute": {"rpc", "protocol", "application"},
    "bad-attribute": {"rpc", "protocol", "application"},
    "unknown-attribute": {"rpc", "protocol", "application"},
    "missing-element": {"protocol", "application"},
    "bad-element": {"protocol", "application"},
    "unknown-element": {"protocol", "application"},
    "unknown-namespace": {"protocol", "application"},
    "access-denied": {"protocol", "application"},
    "lock-denied": {"protocol"},
    "resource-denied": {"transport", "rpc", "protocol", "application"},
    "rollback-failed": {"protocol", "application"},
    "data-exists": {"application"},
    "data-missing": {"application"},
    "operation-not-supported": {"protocol", "application"},
    "operation-failed": {"rpc", "protocol", "application"},
    "malformed-message": {"rpc"},
}


class RpcError(Exception):
    """One rpc-error. Raised anywhere below the session; the session serializes it."""

    def __init__(
        self,
        tag: str,
        message: str,
        *,
        type: str = "application",
        app_tag: str | None = None,
        path: str | None = None,
        info: list[tuple[str, str]] | None = None,
        severity: str = "error",
    ):
        if tag not in ERROR_TAGS:
            raise ValueError(f"unknown error-tag {tag}")
        if type not in ERROR_TAGS[tag]:
            type = sorted(ERROR_TAGS[tag])[0]
        super().__init__(message)
        self.tag = tag
        self.type = type
        self.message = message
        self.app_tag = app_tag
        self.path = path
        self.info = info or []
        self.severity = severity

    def to_xml(self, namespace_of=lambda module: None) -> etree._Element:
        """namespace_of(module name) -> namespace binds the error-path's prefixes
        (module names) on the error-path element, so the path is a valid XPath."""
        err = etree.Element(f"{{{NC_NS}}}rpc-error", nsmap={None: NC_NS})
        for name, value in (
            ("error-type", self.type),
            ("error-tag", self.tag),
            ("error-severity", self.severity),
            ("error-app-tag", self.app_tag),
        ):
            if value is not None:
                etree.SubElement(err, f"{{{NC_NS}}}{name}").text = value
        if self.path is not None:
            prefixes = {p: ns for p in _PREFIX.findall(self.path) if (ns := namespace_of(p))}
            etree.SubElement(err, f"{{{NC_NS}}}error-path", nsmap=prefixes).text = self.path
        msg = etree.SubElement(err, f"{{{NC_NS}}}error-message")
        msg.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        msg.text = self.message
        if self.info:
            info = etree.SubElement(err, f"{{{NC_NS}}}error-info")
            for name, value in self.info:
                etree.SubElement(info, f"{{{NC_NS}}}{name}").text = value
        return err

    def __repr__(self) -> str:
        return f"RpcError({self.tag!r}, {self.message!r}, app_tag={self.app_tag!r}, path={self.path!r})"


class StorageError(RpcError):
    """A state file could not be written (a full or read-only disk): the change was
    refused and nothing of it is live."""

    def __init__(self, what: str, exc: OSError):
        super().__init__("operation-failed", f"cannot write {what}: {exc.strerror or exc}", app_tag="storage-failed")


# a module-name prefix in a libyang path, outside quoted key values
_PREFIX = re.compile(r"(?<![\w.'\"-])([A-Za-z_][\w.-]*):(?=[A-Za-z_*])")


class RpcErrors(Exception):
    """Several rpc-errors in one reply (continue-on-error, multi-error validation)."""

    def __init__(self, errors: list[RpcError]):
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors
