"""The device profile: `STATE_DIR/device.json`, a human-editable JSON file.

    {
      "hostname": "trustplane",
      "domain-name": "",
      "chassis": {"product-id": "8201-32FH", "serial-number": "FOC3047ABCD", "description": "..."},
      "nodes": [
        {"location": "0/RP0/CPU0", "serial-number": "FOC3047A1B2", "product-id": "8201-32FH",
         "role": "active", "idevid-cert": "idevid/0_RP0_CPU0.pem", "idevid-key": "idevid/0_RP0_CPU0.key"}
      ],
      "masa-anchors": ["anchors/masa-root.pem"],
      "manufacturer-anchors": ["anchors/manufacturer-ca.pem"],
      "package-signing-keys": [{"key": "package-keys/vendor.asc", "origin": "xr"}]
    }

Two trust-anchor sets with different roles: "masa-anchors" verify ownership vouchers (the
manufacturer's MASA signs them), "manufacturer-anchors" are the issuers of the nodes' device
identities (IDevIDs). A profile written before the two roles were separate has only
"manufacturer-anchors", which then served both; it is rewritten once with "masa-anchors"
empty (logged), so that no device identity can sign a voucher until an administrator names
a MASA anchor.
Serial numbers are any printable text of up to 64 characters (RFC 8366 serial-number is a
string); generated ones have the LLLYYWWSSSS form. Each node's IDevID certificate must
name its serial (subject serialNumber, or "SN:<serial>" in an attribute) and hold the
public key of its key file.

"package-signing-keys" (optional) lists the OpenPGP public keys (files, binary or
armored) that sign the vendor's and partners' packages, with the origin "xr" or
"partner" they give a package whose signature they verify.
File paths are relative to the state directory and must stay inside it. Roles are
active, standby or none, with at most one active node. The manufacturer CA's
private key lives only in the lab directory, never in the state directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from backends.engine.errors import EngineError
from backends.engine.onboarding.identity import (MANUFACTURING_ROOT, MASA_ROOT, IdentityError, cert_pem, issue_idevid,
                                                 key_pem, load_cert_pem, load_certs_pem, load_key_pem, make_root_ca)
from backends.engine.software.openpgp import OpenPGPError, PublicKey, load_keys
from backends.engine.onboarding.serials import is_valid_serial, make_serial
from yangcore.datastore import atomic_write

log = logging.getLogger(__name__)

PROFILE = "device.json"
PRODUCT_ID = "8201-32FH"
DEFAULT_NODES = ("0/RP0/CPU0", "0/RP1/CPU0")
ROLES = ("active", "standby", "none")
_LOCATION = re.compile(r"^\d+/(RP\d+|RSP\d+|LC\d+|\d+)/CPU\d+$")
PACKAGE_ORIGINS = ("xr", "partner")
MASA_ANCHORS = "masa-anchors"
SERIAL_RULE = "a serial number (1 to 64 printable characters)"
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ProfileError(EngineError):
    def __init__(self, message: str):
        super().__init__("profile-invalid", message, "invalid-value")


@dataclass
class Node:
    location: str
    serial_number: str
    product_id: str
    role: str
    idevid_cert_path: Path
    idevid_key_path: Path
    _cert: x509.Certificate | None = field(default=None, repr=False, compare=False)

    def idevid_cert(self) -> x509.Certificate:
        if self._cert is None:
            self._cert = load_cert_pem(self.idevid_cert_path.read_bytes())
        return self._cert

    def idevid_key(self):
        """The IDevID private key, for the engine's own use (signing as the device)."""
        return load_key_pem(self.idevid_key_path.read_bytes())


@dataclass
class Profile:
    path: Path
    hostname: str
    domain_name: str
    chassis: dict
    nodes: list[Node]
    manufacturer_anchor_paths: list[Path]
    masa_anchor_paths: list[Path]
    package_key_entries: list[dict] = field(default_factory=list)  # as in the file
    # OpenPGP key id (primary keys and subkeys) -> (origin, key)
    package_keys: dict[str, tuple[str, PublicKey]] = field(default_factory=dict)

    def manufacturer_anchors(self) -> list[x509.Certificate]:
        """The issuers of device identities (IDevIDs)."""
        return [c for p in self.manufacturer_anchor_paths for c in load_certs_pem(p.read_bytes())]

    def masa_anchors(self) -> list[x509.Certificate]:
        """What verifies ownership vouchers."""
        return [c for p in self.masa_anchor_paths for c in load_certs_pem(p.read_bytes())]

    def anchors_in_both_roles(self) -> list[x509.Certificate]:
        """Certificates that are both a MASA and a manufacturer anchor: every device identity
        they issue could sign a voucher."""
        masa = set(self.masa_anchors())
        return [c for c in self.manufacturer_anchors() if c in masa]

    def node(self, location: str) -> Node | None:
        return next((n for n in self.nodes if n.location == location), None)


def _valid_hostname(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def load_profile(state_dir: Path) -> Profile:
    path = Path(state_dir) / PROFILE
    root = os.path.realpath(state_dir)

    def fail(msg: str):
        raise ProfileError(f"{path}: {msg}")

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        fail("no such file (run `trustplane init`)")
    except (OSError, ValueError) as exc:
        fail(f"not readable JSON: {exc}")
    if not isinstance(data, dict):
        fail("the top level must be an object")

    def get(obj: dict, key: str, kind, where: str):
        if key not in obj:
            fail(f'{where}: "{key}" is missing')
        if not isinstance(obj[key], kind):
            fail(f'{where}: "{key}" must be a {kind.__name__ if isinstance(kind, type) else "string"}')
        return obj[key]

    def file_in_state(rel, where: str, pem_check) -> Path:
        if not isinstance(rel, str) or not rel:
            fail(f"{where}: must be a file path")
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(root + os.sep):
            fail(f'{where}: "{rel}" is outside the state directory')
        try:
            pem_check(Path(full).read_bytes())
        except OSError as exc:
            fail(f'{where}: cannot read "{rel}": {exc.strerror}')
        except IdentityError as exc:
            fail(f'{where}: "{rel}": {exc}')
        return Path(full)

    hostname = get(data, "hostname", str, "profile")
    if not _valid_hostname(hostname):
        fail(f'"hostname": "{hostname}" is not a valid host name (RFC 1123)')
    domain = data.get("domain-name", "")
    if not isinstance(domain, str) or (domain and not _valid_hostname(domain)):
        fail(f'"domain-name": "{domain}" is not a valid domain name')
    chassis = get(data, "chassis", dict, "profile")
    for key in ("product-id", "serial-number"):
        get(chassis, key, str, "chassis")
    if not is_valid_serial(chassis["serial-number"]):
        fail(f'chassis: serial-number {chassis["serial-number"]!r} is not {SERIAL_RULE}')

    raw_nodes = get(data, "nodes", list, "profile")
    if not raw_nodes:
        fail('"nodes" is empty: a device needs at least one node')
    nodes: list[Node] = []
    for i, raw in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        if not isinstance(raw, dict):
            fail(f"{where}: must be an object")
        loc = get(raw, "location", str, where)
        if not _LOCATION.match(loc):
            fail(f'{where}: location "{loc}" is not of the form 0/RP0/CPU0')
        if any(n.location == loc for n in nodes):
            fail(f'{where}: location "{loc}" appears twice')
        serial = get(raw, "serial-number", str, where)
        if not is_valid_serial(serial):
            fail(f'{where}: serial-number {serial!r} is not {SERIAL_RULE}')
        role = get(raw, "role", str, where)
        if role not in ROLES:
            fail(f'{where}: role "{role}" is not one of {", ".join(ROLES)}')
        cert = file_in_state(raw.get("idevid-cert"), f"{where}: idevid-cert", load_cert_pem)
        key = file_in_state(raw.get("idevid-key"), f"{where}: idevid-key", load_key_pem)
        node = Node(loc, serial, raw.get("product-id", chassis["product-id"]), role, cert, key)
        mismatch = _identity_mismatch(node)
        if mismatch:
            fail(f"{where}: {mismatch}")
        nodes.append(node)
    if sum(n.role == "active" for n in nodes) > 1:
        fail("more than one node has the role active")

    anchor_paths = {}
    for field_name in ("manufacturer-anchors", MASA_ANCHORS):
        anchors = data.get(field_name, [])
        if not isinstance(anchors, list):
            fail(f'"{field_name}" must be a list of file paths')
        anchor_paths[field_name] = [file_in_state(a, f"{field_name}[{i}]", load_certs_pem)
                                    for i, a in enumerate(anchors)]
    entries = data.get("package-signing-keys", [])
    if not isinstance(entries, list):
        fail('"package-signing-keys" must be a list of {"key": FILE, "origin": "xr" or "partner"}')
    package_keys: dict[str, tuple[str, PublicKey]] = {}
    for i, entry in enumerate(entries):
        where = f"package-signing-keys[{i}]"
        if not isinstance(entry, dict):
            fail(f"{where}: must be an object")
        origin = get(entry, "origin", str, where)
        if origin not in PACKAGE_ORIGINS:
            fail(f'{where}: origin "{origin}" is not one of {", ".join(PACKAGE_ORIGINS)}')
        loaded: list[PublicKey] = []

        def check(data: bytes, loaded=loaded):
            try:
                loaded.extend(load_keys(data))
            except OpenPGPError as exc:
                raise IdentityError(f"not an OpenPGP public key: {exc}") from None

        file_in_state(entry.get("key"), f"{where}: key", check)
        for key in loaded:
            package_keys[key.key_id] = (origin, key)
    profile = Profile(path, hostname, domain, chassis, nodes, anchor_paths["manufacturer-anchors"],
                      anchor_paths[MASA_ANCHORS], list(entries), package_keys)
    if MASA_ANCHORS not in data:
        _migrate(profile)
    return profile


def _migrate(profile: Profile) -> None:
    """A profile of one anchor set (for vouchers and IDevIDs alike) becomes one of two roles."""
    old = ", ".join(os.path.relpath(p, profile.path.parent) for p in profile.manufacturer_anchor_paths) or "none"
    try:
        save_profile(profile)
        done = "rewritten"
    except OSError as exc:
        done = f"read as such (cannot rewrite it: {exc.strerror})"
    log.warning('%s: one-anchor-set profile %s with separate trust-anchor roles: "manufacturer-anchors" (%s) '
                'now verify device identities only, and no voucher verifies until a MASA anchor is listed in '
                '"masa-anchors"', profile.path, done, old)


def _identity_mismatch(node: Node) -> str | None:
    """Why the node's IDevID is not its own: it names another serial, or its key file holds another key."""
    cert = node.idevid_cert()
    names = [a.value for a in cert.subject if a.oid in (NameOID.SERIAL_NUMBER, NameOID.COMMON_NAME)
             and isinstance(a.value, str)]
    if not any(v == node.serial_number or f"SN:{node.serial_number}" in v.split() for v in names):
        return (f"the IDevID certificate {os.path.basename(node.idevid_cert_path)} names no serial "
                f"{node.serial_number!r} (subject {cert.subject.rfc4514_string()})")
    if node.idevid_key().public_key() != cert.public_key():
        return (f"the IDevID key {os.path.basename(node.idevid_key_path)} is not the key of the IDevID "
                f"certificate {os.path.basename(node.idevid_cert_path)}")
    return None


def save_profile(profile: Profile) -> None:
    atomic_write(profile.path, profile_bytes(profile), mode=0o644)


def profile_bytes(profile: Profile) -> bytes:
    """The profile file's content for profile."""
    root = profile.path.parent
    data = {
        "hostname": profile.hostname,
        "domain-name": profile.domain_name,
        "chassis": profile.chassis,
        "nodes": [{"location": n.location, "serial-number": n.serial_number, "product-id": n.product_id,
                   "role": n.role, "idevid-cert": os.path.relpath(n.idevid_cert_path, root),
                   "idevid-key": os.path.relpath(n.idevid_key_path, root)} for n in profile.nodes],
        MASA_ANCHORS: [os.path.relpath(p, root) for p in profile.masa_anchor_paths],
        "manufacturer-anchors": [os.path.relpath(p, root) for p in profile.manufacturer_anchor_paths],
    }
    if profile.package_key_entries:
        data["package-signing-keys"] = profile.package_key_entries
    return (json.dumps(data, indent=2) + "\n").encode()


def _lab_root(lab_dir: Path, stem: str, name: str, now: datetime):
    """A lab root CA, reused when the lab has it: one manufacturer (one manufacturing CA,
    one MASA) makes many devices."""
    key_path, cert_path = lab_dir / f"{stem}.key", lab_dir / f"{stem}.pem"
    if key_path.exists() and cert_path.exists():
        try:
            return load_key_pem(key_path.read_bytes()), load_cert_pem(cert_path.read_bytes())
        except IdentityError as exc:
            raise ProfileError(f"{lab_dir}: unreadable {stem}: {exc}") from None
    key, cert = make_root_ca(now, name)
    lab_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(key_path, key_pem(key), mode=0o600)
    atomic_write(cert_path, cert_pem(cert).encode(), mode=0o644)
    return key, cert


def _extra_anchors(paths, role: str) -> list[Path]:
    for anchor in paths:
        try:
            load_certs_pem(Path(anchor).read_bytes())
        except (OSError, IdentityError) as exc:
            raise ProfileError(f"{role} anchor {anchor}: {getattr(exc, 'strerror', None) or exc}") from None
    return [Path(a) for a in paths]


def init_state_dir(state_dir: Path, lab_dir: Path, nodes: list[tuple[str, str]] | None = None,
                   manufacturer_anchors=(), hostname: str = "trustplane", *, now: datetime,
                   masa_anchors=()) -> Profile:
    """A new state directory. The lab's manufacturing CA issues the IDevIDs and is the
    manufacturer anchor; the lab's MASA root, a CA of its own, is the MASA anchor. Extra
    anchors of either role are copied in."""
    state_dir, lab_dir = Path(state_dir), Path(lab_dir)
    if (state_dir / PROFILE).exists():
        raise ProfileError(f"{state_dir / PROFILE} already exists")
    if os.path.realpath(lab_dir).startswith(os.path.realpath(state_dir) + os.sep):
        raise ProfileError(f"the lab directory {lab_dir} must not be inside the state directory")
    wanted = list(nodes) if nodes else [(loc, make_serial(now)) for loc in DEFAULT_NODES]
    seen = set()
    for loc, serial in wanted:
        if not _LOCATION.match(loc):
            raise ProfileError(f'node location "{loc}" is not of the form 0/RP0/CPU0')
        if not is_valid_serial(serial):
            raise ProfileError(f'node {loc}: serial number {serial!r} is not {SERIAL_RULE}')
        if loc in seen:
            raise ProfileError(f'node location "{loc}" given twice')
        seen.add(loc)
    extra = {"manufacturer": _extra_anchors(manufacturer_anchors, "manufacturer"),
             "masa": _extra_anchors(masa_anchors, "MASA")}

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = _lab_root(lab_dir, "manufacturer-ca", MANUFACTURING_ROOT, now)
    _masa_key, masa_root = _lab_root(lab_dir, "masa-root", MASA_ROOT, now)
    (state_dir / "anchors").mkdir(exist_ok=True)
    (state_dir / "idevid").mkdir(mode=0o700, exist_ok=True)
    anchors = {"manufacturer": ["anchors/manufacturer-ca.pem"], "masa": ["anchors/masa-root.pem"]}
    atomic_write(state_dir / anchors["manufacturer"][0], cert_pem(ca_cert).encode(), mode=0o644)
    atomic_write(state_dir / anchors["masa"][0], cert_pem(masa_root).encode(), mode=0o644)
    for role, paths in extra.items():
        for i, src in enumerate(paths):
            rel = f"anchors/{role}-{i}-{src.name}"
            shutil.copyfile(src, state_dir / rel)
            anchors[role].append(rel)

    node_entries = []
    for i, (loc, serial) in enumerate(wanted):
        key, cert = issue_idevid(ca_key, ca_cert, serial, PRODUCT_ID, now)
        stem = "idevid/" + loc.replace("/", "_")
        atomic_write(state_dir / f"{stem}.key", key_pem(key), mode=0o600)
        atomic_write(state_dir / f"{stem}.pem", cert_pem(cert).encode(), mode=0o644)
        node_entries.append({"location": loc, "serial-number": serial, "product-id": PRODUCT_ID,
                             "role": "active" if i == 0 else "standby",
                             "idevid-cert": f"{stem}.pem", "idevid-key": f"{stem}.key"})
    data = {
        "hostname": hostname,
        "domain-name": "",
        "chassis": {"product-id": PRODUCT_ID, "serial-number": make_serial(now),
                    "description": "trustplane simulated router"},
        "nodes": node_entries,
        MASA_ANCHORS: anchors["masa"],
        "manufacturer-anchors": anchors["manufacturer"],
    }
    atomic_write(state_dir / PROFILE, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)
    return load_profile(state_dir)
