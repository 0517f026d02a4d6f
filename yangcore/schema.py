"""The libyang context: built once at start from yang/ and the IETF modules pyang ships.

libyang 2.1.30 keeps no data path in its stored error items, but hands it to the
log callback, so errors are collected from there and paired with the stored items.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import libyang
from _libyang import ffi, lib

log = logging.getLogger(__name__)

YANG_DIR = Path(__file__).resolve().parent.parent / "yang"
IETF_DIR = Path(sys.prefix) / "share" / "yang" / "modules" / "ietf"
IANA_DIR = IETF_DIR.parent / "iana"



@dataclass
class YangErrorItem:
    vecode: int
    message: str
    path: str | None
    app_tag: str | None


class YangError(libyang.LibyangError):
    def __init__(self, msg: str, items: list[YangErrorItem]):
        super().__init__(msg)
        self.items = items


_LOCATION = re.compile(r'Data location "([^"]+)"')
# libyang 2.1 reports some errors (a missing mandatory node) with the schema path only
_SCHEMA_LOCATION = re.compile(r'Schema location "([^"]+)"')


class _PathCapture(logging.Handler):
    """Remembers the data path libyang logs with each message."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.paths: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if len(record.args or ()) == 2:
            msg, where = record.args
            if len(self.paths) > 64:
                self.paths.clear()
            if m := _LOCATION.search(where or "") or _SCHEMA_LOCATION.search(where or ""):
                self.paths[msg] = m.group(1)


_capture = _PathCapture()
logging.getLogger("libyang").addHandler(_capture)
logging.getLogger("libyang").propagate = False
libyang.configure_logging(True, logging.ERROR)


class YangContext(libyang.Context):
    """libyang.Context whose errors keep their structure (vecode, path, app-tag)."""

    _by_ns: dict[str, object] | None = None
    _ns_by_name: dict[str, str] | None = None
    _ns_of_any: dict[str, str] | None = None

    def module_by_ns(self, ns: str):
        """The implemented `struct lys_module *` with this namespace, or None."""
        if self._by_ns is None:
            self._by_ns = {}
            idx = ffi.new("uint32_t *")
            mod = lib.ly_ctx_get_module_iter(self.cdata, idx)
            while mod != ffi.NULL:
                if mod.implemented:
                    self._by_ns[ffi.string(mod.ns).decode()] = mod
                mod = lib.ly_ctx_get_module_iter(self.cdata, idx)
        return self._by_ns.get(ns)

    def namespace_of(self, module: str) -> str | None:
        """The namespace of an implemented module, by name."""
        if self._ns_by_name is None:
            self.module_by_ns("")
            self._ns_by_name = {ffi.string(m.name).decode(): ns for ns, m in self._by_ns.items()}
        return self._ns_by_name.get(module)

    def identity_namespace(self, module: str) -> str | None:
        """The namespace of a module, implemented or only imported: identities may be
        defined in either."""
        if self._ns_of_any is None:
            self._ns_of_any = {}
            idx = ffi.new("uint32_t *")
            mod = lib.ly_ctx_get_module_iter(self.cdata, idx)
            while mod != ffi.NULL:
                self._ns_of_any.setdefault(ffi.string(mod.name).decode(), ffi.string(mod.ns).decode())
                mod = lib.ly_ctx_get_module_iter(self.cdata, idx)
        return self._ns_of_any.get(module)

    def error(self, msg: str, *args) -> YangError:
        items = []
        if self.cdata:
            err = lib.ly_err_first(self.cdata)
            while err:
                text = ffi.string(err.msg).decode() if err.msg else ""
                items.append(
                    YangErrorItem(
                        err.vecode,
                        text,
                        _capture.paths.get(text),
                        ffi.string(err.apptag).decode() if err.apptag else None,
                    )
                )
                err = err.next
            lib.ly_err_clean(self.cdata, ffi.NULL)
        _capture.paths.clear()
        text = msg % args if args else msg
        if items:
            text += ": " + "; ".join(i.message for i in items)
        return YangError(text, items)


def build_context(modules: list[str], extra_dirs: list[Path] = (),
                  features: dict[str, tuple[str, ...]] | None = None) -> YangContext:
    """A context with modules implemented, each with all its features but those
    `features` names: they get only the features listed there."""
    features = features or {}
    search = [str(YANG_DIR), *map(str, extra_dirs), str(IETF_DIR), str(IANA_DIR)]
    # the binding would also search $YANGPATH: the server decides where modules come from
    saved = {k: os.environ.pop(k) for k in ("YANGPATH", "YANG_MODPATH") if k in os.environ}
    try:
        ctx = YangContext(":".join(search), disable_searchdir_cwd=True)
    finally:
        os.environ.update(saved)
    for name in modules:
        mod = ctx.load_module(name)
        if name not in features:
            mod.feature_enable_all()
            continue
        names = [ffi.new("char[]", f.encode()) for f in features[name]]
        if lib.lys_set_implemented(mod.cdata, ffi.new("char *[]", [*names, ffi.NULL])) != lib.LY_SUCCESS:
            raise ctx.error(f"cannot enable the features of {name}")
    return ctx

