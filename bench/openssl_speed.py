"""Verify rates from `openssl speed`, the reference for the engine's signature checks.
Without -elapsed, `openssl speed` divides the operations done by the user CPU time they took."""
from __future__ import annotations

import re
import subprocess

# the line of each algorithm in `openssl speed` output: sign/s, then verify/s
LINES = {"ecdsap256": r"256 bits ecdsa \(nistp256\)", "rsa2048": r"rsa\s+2048 bits"}


def verify_per_s(algorithm: str) -> float:
    text = subprocess.run(["openssl", "speed", "-seconds", "2", algorithm], capture_output=True, text=True,
                          check=True).stdout
    m = re.search(LINES[algorithm] + r"\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", text)
    return float(m.group(2))
