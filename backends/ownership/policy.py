"""What device ownership decides for other parts of the device, read from the ownership
state: the security profile in force, the owner's package signing keys (GPGKEY
entries of the customer key packages) and the device_ownership trustpoint's CA
certificates."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from backends.engine.software import openpgp

log = logging.getLogger(__name__)


@dataclass
class Policy:
    security_profile: str | None = None  # None: no ownership established
    owner_package_keys: dict[str, openpgp.PublicKey] = field(default_factory=dict)  # key id -> key


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / "ownership" / "state.json"


def security_profile(data: dict) -> str | None:
    """Across the nodes: strict if any node is strict, else the lowest of the rest."""
    profiles = {n["voucher"]["security-profile"] for n in data.get("nodes", {}).values()}
    return None if not profiles else "strict" if "strict" in profiles else min(profiles)


def _load(state_dir: Path) -> dict:
    path = state_path(state_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def read(state_dir: Path) -> Policy:
    data = _load(state_dir)
    if not data:
        return Policy()
    keys: dict[str, openpgp.PublicKey] = {}
    for name, k in ((data.get("key-packages") or {}).get("keys") or {}).items():
        if k["key_type"] != "GPGKEY":
            continue
        try:
            for key in openpgp.load_keys(k["value"].encode()):
                keys[key.key_id] = key
        except openpgp.OpenPGPError as exc:
            log.warning("key package key %s is not a usable OpenPGP key: %s", name, exc)
    return Policy(security_profile(data), keys)


def trustpoint_certificates(state_dir: Path) -> list[str]:
    """IOS XR's device_ownership trustpoint holds the PDC and the OC chain as CA certificates.
    The device-wide view is that of the first node with ownership (all nodes share one owner)."""
    rec = next(iter(_load(state_dir).get("nodes", {}).values()), None)
    if rec is None:
        return []
    return [rec["pdc"], *(pem for pem in rec["oc-chain"] if pem != rec["pdc"])]
