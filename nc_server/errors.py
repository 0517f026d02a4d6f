"""RFC 6241 Appendix A rpc-errors, their XML form, and the one mapping of the core's
errors (domain errors, libyang's validation errors) to them."""
from __future__ import annotations

import re

import libyang
from _libyang import lib
from lxml import etree

from backends.engine.errors import EngineError
from yangcore.commit import InvalidConfig
from yangcore.nacm import OperationDenied
from yangcore.schema import YangErrorItem

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
        type: str | None = None,
        app_tag: str | None = None,
        path: str | None = None,
        info: list[tuple[str, str]] | None = None,
        severity: str = "error",
    ):
        if tag not in ERROR_TAGS:
            raise ValueError(f"unknown error-tag {tag}")
        if type is None:  # application, or the one type a protocol-only tag has
            type = "application" if "application" in ERROR_TAGS[tag] else min(ERROR_TAGS[tag])
        elif type not in ERROR_TAGS[tag]:
            raise ValueError(f"error-type {type} is not allowed with error-tag {tag}")
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


# a module-name prefix in a libyang path, outside quoted key values
_PREFIX = re.compile(r"(?<![\w.'\"-])([A-Za-z_][\w.-]*):(?=[A-Za-z_*])")


class RpcErrors(Exception):
    """Several rpc-errors in one reply (continue-on-error, multi-error validation)."""

    def __init__(self, errors: list[RpcError]):
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


def wire_errors(exc: RpcError | RpcErrors | EngineError) -> list[RpcError]:
    """The rpc-errors of a failure: the one place a domain error becomes an rpc-error.
    A refused operation is a protocol error (RFC 6241 Appendix A), every other domain
    error an application error; an invalid configuration maps as libyang reported it."""
    if isinstance(exc, RpcErrors):
        return exc.errors
    if isinstance(exc, RpcError):
        return [exc]
    if isinstance(exc, InvalidConfig):
        mapped = to_rpc_errors(exc.cause, default_tag=exc.tag)
        return mapped.errors if isinstance(mapped, RpcErrors) else [mapped]
    return [RpcError(exc.tag, exc.message, type="protocol" if isinstance(exc, OperationDenied) else None,
                     app_tag=exc.code, path=exc.path)]


_NOT_CHILD = re.compile(r'Node "([^"]+)" not found')
_NO_NS = re.compile(r'No module with namespace "([^"]+)"')


def to_rpc_errors(exc: libyang.LibyangError, *, default_tag: str = "invalid-value") -> RpcError | RpcErrors:
    """Map a libyang failure to RFC 6241 / RFC 7950 §15 rpc-errors."""
    items = getattr(exc, "items", None) or [YangErrorItem(lib.LYVE_OTHER, str(exc), None, None)]
    errors = [_one(item, default_tag) for item in items]
    return errors[0] if len(errors) == 1 else RpcErrors(errors)


def _one(item: YangErrorItem, default_tag: str) -> RpcError:
    msg, app, path = item.message, item.app_tag, item.path
    if m := _NO_NS.search(msg):
        return RpcError("unknown-namespace", msg, path=path,
                        info=[("bad-element", "?"), ("bad-namespace", m.group(1))])
    if m := _NOT_CHILD.search(msg):
        return RpcError("unknown-element", msg, path=path, info=[("bad-element", m.group(1))])
    if app == "instance-required":
        return RpcError("data-missing", msg, app_tag=app, path=path)
    if app in ("data-not-unique", "too-many-elements", "too-few-elements"):
        return RpcError("operation-failed", msg, app_tag=app, path=path)
    if msg.startswith("Mandatory node") or msg.startswith("Mandatory choice"):
        return RpcError("data-missing", msg, app_tag="missing-choice" if "choice" in msg else None, path=path)
    if "missing its key" in msg:
        return RpcError("missing-element", msg, path=path)
    if msg.startswith("Duplicate instance") or msg.startswith("Data for both cases"):
        return RpcError("bad-element", msg, path=path)
    if msg.startswith("When condition"):
        return RpcError("unknown-element", msg, path=path)
    if item.vecode == lib.LYVE_DATA and app:
        # must / custom error-app-tag from the module
        return RpcError("operation-failed", msg, app_tag=app, path=path)
    if msg.startswith("Must condition"):
        return RpcError("operation-failed", msg, app_tag="must-violation", path=path)
    return RpcError(default_tag, msg, path=path)
