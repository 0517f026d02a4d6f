"""libyang C functions the Python binding does not expose, called through the ABI
of the same shared library the binding uses."""
from __future__ import annotations

import cffi
from _libyang import ffi

_abi = cffi.FFI()
_abi.cdef("""
int lyd_insert_before(void *sibling, void *node);
int lyd_insert_after(void *sibling, void *node);
int lyd_change_term(void *term, const char *val_str);
""")
_ly = _abi.dlopen("libyang.so.2")


def _ptr(node):
    return _abi.cast("void *", int(ffi.cast("uintptr_t", node)))


def insert_before(sibling, node) -> int:
    return _ly.lyd_insert_before(_ptr(sibling), _ptr(node))


def insert_after(sibling, node) -> int:
    return _ly.lyd_insert_after(_ptr(sibling), _ptr(node))


def change_term(node, value: str) -> int:
    """Set a leaf's value; LY_SUCCESS, LY_EEXIST (unchanged) or an error."""
    return _ly.lyd_change_term(_ptr(node), value.encode())
