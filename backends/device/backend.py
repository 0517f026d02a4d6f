"""The device backend: inventory state from the device profile, the device filesystem's state,
and the host/domain name config."""
from __future__ import annotations

import dataclasses
import hashlib
import logging

from cryptography.hazmat.primitives import serialization

from yangcore.backend import Backend, ConfigDiff, Services, read_device_file, register
from yangcore.devfs import DEVICES

from .profile import Profile, load_profile, profile_bytes

log = logging.getLogger(__name__)

SYSTEM = "/trustplane-device:device/system"
DEFAULT_HOSTNAME = "trustplane"


class DeviceBackend(Backend):
    def __init__(self, services: Services):
        super().__init__(
            name="device",
            modules=("trustplane-device",),
            state={"/trustplane-device:device/inventory": self.inventory,
                   "/trustplane-device:device/filesystem": self.filesystem},
            config=(SYSTEM,),
            rpcs={"/trustplane-device:file-checksum": self.file_checksum},
        )
        self.devfs = services.devfs
        self.profile: Profile = load_profile(services.state_dir)
        self._inventory: dict | None = None

    def inventory(self) -> dict:
        if self._inventory is None:  # the profile does not change while serving
            self._inventory = self._render_inventory()
        return self._inventory

    def filesystem(self) -> dict:
        fs = self.devfs
        return {"trustplane-device:device": {"filesystem": {
            "quota-bytes": fs.max_bytes, "used-bytes": fs.used_bytes, "max-files": fs.max_files,
            "used-files": fs.used_files, "root": [{"name": d} for d in DEVICES]}}}

    def _render_inventory(self) -> dict:
        chassis = self.profile.chassis
        nodes = []
        for node in self.profile.nodes:
            cert = node.idevid_cert()
            nodes.append({
                "location": node.location, "serial-number": node.serial_number, "product-id": node.product_id,
                "role": node.role,
                "idevid": {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
                           "serial": f"{cert.serial_number:x}", "not-after": cert.not_valid_after_utc.isoformat(),
                           "certificate": cert.public_bytes(serialization.Encoding.PEM).decode()}})
        return {"trustplane-device:device": {"inventory": {
            "chassis": {"product-id": chassis["product-id"], "serial-number": chassis["serial-number"],
                        "description": chassis.get("description") or None},
            "node": nodes}}}

    def file_checksum(self, session, params: dict) -> dict:
        data, canonical = read_device_file(self.devfs, params["path"], session=session)
        digest = hashlib.new(params.get("algorithm", "sha256"), data).hexdigest()
        return {"path": canonical, "size": len(data), "checksum": digest}

    def prepare(self, diff: ConfigDiff, writes) -> None:
        names = _names(diff.new)
        if names != (self.profile.hostname, self.profile.domain_name):
            new = dataclasses.replace(self.profile, hostname=names[0], domain_name=names[1])
            writes.write(self.profile.path, profile_bytes(new), "the device profile", mode=0o644)

    def apply(self, diff: ConfigDiff) -> None:
        hostname, domain = _names(diff.new)
        if (hostname, domain) == (self.profile.hostname, self.profile.domain_name):
            return
        self.profile.hostname, self.profile.domain_name = hostname, domain
        log.info("hostname is now %s%s", hostname, f".{domain}" if domain else "")


def _names(tree) -> tuple[str, str]:
    """The host and domain names a configuration gives."""
    return _leaf(tree, f"{SYSTEM}/hostname") or DEFAULT_HOSTNAME, _leaf(tree, f"{SYSTEM}/domain-name") or ""


def _leaf(tree, path: str) -> str | None:
    if tree is None:
        return None
    node = tree.find_path(path)
    return None if node is None else str(node.value())


register("device")(DeviceBackend)
