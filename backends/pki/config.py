"""Trustpoint configuration, read from the Cisco-IOS-XR-um-crypto-cfg tree into plain values,
and the checks a commit must pass before any trustpoint uses it."""
from __future__ import annotations

from dataclasses import dataclass, field

from backends.engine.errors import EngineError

CRYPTO = "/Cisco-IOS-XR-um-crypto-cfg:crypto"
SYSTEM_TRUSTPOINT = "system-trustpoint"
TP_PATH = CRYPTO + "/ca/trustpoint/trustpoints/trustpoint[trustpoint-name='{}']"
SYSTEM_PATH = CRYPTO + "/ca/trustpoint/system-trustpoint"
POLICY_PATH = CRYPTO + "/ca/trustpool/policy"
CHALLENGE_PASSWORDS = CRYPTO + "/ca/trustpoint/trustpoints/trustpoint/challenge-password/password6"
DEFAULT_LABEL = "the_default"
WEAK_DIGESTS = ("md5", "sha1")
# keypair leaf -> (keystore family, curve)
KEYPAIR_LEAVES = {"rsa": ("rsa", None), "ecdsanistp256": ("ecdsa", "nistp256"), "ecdsanistp384": ("ecdsa", "nistp384"),
                  "ecdsanistp521": ("ecdsa", "nistp521"), "ed25519": ("ed25519", None)}
CERT_USAGES = ("digitalsignature", "keyagreement", "nonrepudiation", "dataencipherment", "keyencipherment")
CA_USAGES = ("digitalsignature", "keycertsign", "crlsign", "nonrepudiation")


@dataclass(frozen=True)
class KeyRef:
    family: str
    label: str
    curve: str | None = None

    def text(self) -> str:
        return f"{self.family}{' ' + self.curve if self.curve else ''} key {self.label!r}"


@dataclass
class Trustpoint:
    name: str
    path: str                      # its config path, for error-path
    enrollment: str | None = None  # "url" | "terminal" | "self" | None
    url: str | None = None
    retry_period: int = 1          # minutes
    retry_count: int = 10
    key: KeyRef = KeyRef("rsa", DEFAULT_LABEL)
    key_leaf: str = "rsakeypair"
    ca_key: KeyRef | None = None
    ca_key_leaf: str = "ca-keypair"
    subject_name: str | None = None
    ca_subject_name: str | None = None
    serial_number: bool | None = None  # None: ask (RPC input)
    ip_address: str | None = None      # "none": never; None: ask
    lifetime_ca: int = 365
    lifetime_cert: int = 365
    key_usage_ca: set[str] | None = None
    key_usage_cert: set[str] | None = None
    digest: str = "sha256"
    crl_optional: bool = False
    challenge_password: str | None = None  # its type 6 form
    description: str | None = None


@dataclass
class Policy:
    cabundle_url: str | None = None
    crl_optional: bool = False
    description: str | None = None


@dataclass
class PkiConfig:
    trustpoints: dict[str, Trustpoint] = field(default_factory=dict)
    trustpool: Policy | None = None
    crl_timeout: int = 10


def _keyref(d: dict | None) -> tuple[KeyRef, str] | tuple[None, None]:
    for leaf, (family, curve) in KEYPAIR_LEAVES.items():
        if d and d.get(leaf):
            return KeyRef(family, d[leaf], curve), leaf
    return None, None


def _trustpoint(name: str, path: str, d: dict) -> Trustpoint:
    tp = Trustpoint(name, path)
    enr = d.get("enrollment") or {}
    url = enr.get("url")
    if "self" in enr or url == "self":
        tp.enrollment = "self"
    elif "terminal" in enr:
        tp.enrollment = "terminal"
    elif url:
        tp.enrollment, tp.url = "url", url
    retry = enr.get("retry") or {}
    tp.retry_period = int(retry.get("period", 1))
    tp.retry_count = int(retry.get("count", 10))
    key, leaf = _keyref(d.get("keypair"))
    tp.key, tp.key_leaf = (key, f"keypair/{leaf}") if key else (KeyRef("rsa", d.get("rsakeypair") or DEFAULT_LABEL),
                                                               "rsakeypair")
    tp.ca_key, leaf = _keyref(d.get("ca-keypair"))
    tp.ca_key_leaf = f"ca-keypair/{leaf}"
    tp.subject_name = d.get("subject-name")
    tp.ca_subject_name = d.get("subject-name-ca-certificate")
    if "serial-number" in d:
        tp.serial_number = "none" not in (d["serial-number"] or {})
    ip = d.get("ip-address") or {}
    tp.ip_address = "none" if "none" in ip else ip.get("ipv4-address")
    life = d.get("lifetime") or {}
    tp.lifetime_ca = int(life.get("ca-certificate", 365))
    tp.lifetime_cert = int(life.get("certificate", 365))
    ku = d.get("key-usage") or {}
    if "ca-certificate" in ku:
        tp.key_usage_ca = {u for u in CA_USAGES if (ku["ca-certificate"] or {}).get(u)}
    if "certificate" in ku:
        tp.key_usage_cert = {u for u in CERT_USAGES if u in (ku["certificate"] or {})}
    tp.digest = d.get("message-digest") or "sha256"
    tp.crl_optional = "optional" in (d.get("crl") or {})
    tp.challenge_password = (d.get("challenge-password") or {}).get("password6")
    tp.description = d.get("description")
    return tp


def parse(tree) -> PkiConfig:
    """The PKI configuration in a running/candidate tree (None: empty)."""
    cfg = PkiConfig()
    node = tree.find_path(CRYPTO) if tree is not None else None
    if node is None:
        return cfg
    ca = (node.print_dict(absolute=False).get("crypto") or {}).get("ca") or {}
    tps = ca.get("trustpoint") or {}
    if "system-trustpoint" in tps:
        cfg.trustpoints[SYSTEM_TRUSTPOINT] = _trustpoint(SYSTEM_TRUSTPOINT, SYSTEM_PATH, tps["system-trustpoint"] or {})
    for d in (tps.get("trustpoints") or {}).get("trustpoint") or []:
        name = d["trustpoint-name"]
        cfg.trustpoints[name] = _trustpoint(name, TP_PATH.format(name), d)
    pool = ca.get("trustpool") or {}
    if "policy" in pool:
        p = pool["policy"] or {}
        cfg.trustpool = Policy((p.get("cabundle") or {}).get("url"), "optional" in (p.get("crl") or {}),
                               p.get("description"))
    cfg.crl_timeout = int((ca.get("crl") or {}).get("curl-timeout", 10))
    return cfg


def check(cfg: PkiConfig, key_exists) -> None:
    """Refuse what no enrollment could use. key_exists(KeyRef) says whether the key store has it."""
    for tp in cfg.trustpoints.values():
        if tp.enrollment == "self" and tp.name != SYSTEM_TRUSTPOINT:
            raise EngineError("self-enrollment-unsupported",
                              f"trustpoint {tp.name}: enrollment url self needs a ca-keypair, which only the "
                              "system-trustpoint has", "invalid-value", tp.path + "/enrollment/url")
        if tp.enrollment == "url" and not tp.url.lower().startswith("http://"):
            raise EngineError("enrollment-url-invalid",
                              f"trustpoint {tp.name}: enrollment url {tp.url!r} is not an http:// SCEP URL",
                              "invalid-value", tp.path + "/enrollment/url")
        if tp.digest in WEAK_DIGESTS:
            raise EngineError("weak-digest",
                              f"trustpoint {tp.name}: message-digest {tp.digest} is refused for new certificates; "
                              "use sha256, sha384 or sha512", "invalid-value", tp.path + "/message-digest")
        if tp.key_usage_ca is not None and "keycertsign" not in tp.key_usage_ca:
            raise EngineError("key-usage-invalid",
                              f"trustpoint {tp.name}: key-usage ca-certificate must include keycertsign",
                              "invalid-value", tp.path + "/key-usage/ca-certificate/keycertsign")
        for ref, leaf in ((tp.key, tp.key_leaf), (tp.ca_key, tp.ca_key_leaf)):
            if ref is None or (ref.label == DEFAULT_LABEL and leaf == "rsakeypair"):
                continue  # the default key is looked for at enrollment, as IOS XR does
            if not key_exists(ref):
                raise EngineError("key-not-found", f"trustpoint {tp.name}: no {ref.text()}; generate it first",
                                  "invalid-value", f"{tp.path}/{leaf}")
    if cfg.trustpool and cfg.trustpool.cabundle_url:
        url = cfg.trustpool.cabundle_url
        if not url.lower().startswith(("http://", "https://", "disk0:", "harddisk:", "/")):
            raise EngineError("trustpool-url-invalid",
                              f"trustpool cabundle url {url!r} is not http://, https:// or a device file",
                              "invalid-value", POLICY_PATH + "/cabundle/url")
