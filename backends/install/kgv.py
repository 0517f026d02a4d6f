"""Known-good values: the published install-time fingerprint of each package.

The file is JSON:

    {"packages": [{"name": "demo", "version": "1.0.0", "release": "r1",
                   "fingerprint": "<64 hex digits>"}, ...]}

An entry may also give "architecture"; without it the entry holds for every
architecture. A name, version, release (and architecture) appears once.
"""
from __future__ import annotations

import json
import re

from backends.engine.errors import EngineError

MAX_ENTRIES = 100_000
_FP = re.compile(r"^[0-9a-f]{64}$")
FIELDS = ("name", "version", "release", "fingerprint")


class KgvError(EngineError):
    def __init__(self, message: str):
        super().__init__("kgv-malformed", message, "invalid-value")


def parse(data: bytes) -> dict[tuple[str, str, str, str], str]:
    """(name, version, release, architecture or "") -> fingerprint."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KgvError(f"not valid JSON: {exc}") from None
    entries = doc.get("packages") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise KgvError('expected an object with a "packages" list')
    if len(entries) > MAX_ENTRIES:
        raise KgvError(f"{len(entries)} entries is more than {MAX_ENTRIES}")
    out: dict[tuple[str, str, str, str], str] = {}
    for i, e in enumerate(entries):
        where = f"packages[{i}]"
        if not isinstance(e, dict):
            raise KgvError(f"{where} is not an object")
        for f in FIELDS:
            if not isinstance(e.get(f), str) or not e[f]:
                raise KgvError(f'{where} has no "{f}" string')
        arch = e.get("architecture", "")
        if not isinstance(arch, str):
            raise KgvError(f'{where}: "architecture" is not a string')
        fp = e["fingerprint"].lower()
        if not _FP.match(fp):
            raise KgvError(f"{where}: the fingerprint is not 64 hex digits (SHA-256)")
        key = (e["name"], e["version"], e["release"], arch)
        if key in out:
            raise KgvError(f"{where} repeats {'-'.join(key[:3])}")
        out[key] = fp
    return out


def lookup(kgv: dict, name: str, version: str, release: str, arch: str) -> str | None:
    return kgv.get((name, version, release, arch)) or kgv.get((name, version, release, ""))


def verdict(known: str | None, install_time: str, run_time: str) -> str:
    if known is None:
        return "no-kgv"
    if install_time != known:
        return "install-time-mismatch"
    if run_time != install_time:
        return "run-time-drift"
    return "genuine"
