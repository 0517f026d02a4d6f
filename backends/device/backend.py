"""The device backend: inventory state from the device profile, the device filesystem's state,
and the host/domain name config."""
from __future__ import annotations

import dataclasses
import hashlib
import logging

from cryptography.hazmat.primitives import serialization

from yangcore.backend import Backend, ConfigDiff, Services, read_device_file, register, xml_text
from yangcore.devfs import DEVICES

from .profile import Profile, load_profile, profile_bytes

log = logging.getLogger(__name__)

NS = "urn:trustplane:yang:trustplane-device"
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
        self._inventory_xml: str | None = None

    def inventory(self) -> str:
        if self._inventory_xml is None:  # the profile does not change while serving
            self._inventory_xml = self._render_inventory()
        return self._inventory_xml

    def filesystem(self) -> str:
        fs = self.devfs
        roots = "".join(f"<root><name>{xml_text(d)}</name></root>" for d in DEVICES)
        return (f'<device xmlns="{NS}"><filesystem><quota-bytes>{fs.max_bytes}</quota-bytes>'
                f"<used-bytes>{fs.used_bytes}</used-bytes><max-files>{fs.max_files}</max-files>"
                f"<used-files>{fs.used_files}</used-files>{roots}</filesystem></device>")

    def _render_inventory(self) -> str:
        p = self.profile
        chassis = p.chassis
        parts = [f'<device xmlns="{NS}"><inventory><chassis>',
                 f"<product-id>{xml_text(chassis['product-id'])}</product-id>",
                 f"<serial-number>{xml_text(chassis['serial-number'])}</serial-number>"]
        if chassis.get("description"):
            parts.append(f"<description>{xml_text(chassis['description'])}</description>")
        parts.append("</chassis>")
        for node in p.nodes:
            cert = node.idevid_cert()
            pem = cert.public_bytes(serialization.Encoding.PEM).decode()
            parts.append(
                f"<node><location>{xml_text(node.location)}</location>"
                f"<serial-number>{xml_text(node.serial_number)}</serial-number>"
                f"<product-id>{xml_text(node.product_id)}</product-id><role>{node.role}</role>"
                f"<idevid><subject>{xml_text(cert.subject.rfc4514_string())}</subject>"
                f"<issuer>{xml_text(cert.issuer.rfc4514_string())}</issuer>"
                f"<serial>{cert.serial_number:x}</serial>"
                f"<not-after>{cert.not_valid_after_utc.isoformat()}</not-after>"
                f"<certificate>{xml_text(pem)}</certificate></idevid></node>")
        parts.append("</inventory></device>")
        return "".join(parts)

    def file_checksum(self, session, params: dict) -> str:
        data, canonical = read_device_file(self.devfs, params["path"], session=session)
        digest = hashlib.new(params.get("algorithm", "sha256"), data).hexdigest()
        return (f'<path xmlns="{NS}">{xml_text(canonical)}</path><size xmlns="{NS}">{len(data)}</size>'
                f'<checksum xmlns="{NS}">{digest}</checksum>')

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
