"""Verify rates from `openssl speed`, the reference for the engine's signature checks, and
ours counted the same way: without -elapsed, `openssl speed` divides the operations done in a
fixed wall time by the user CPU time they took."""
from __future__ import annotations

import re
import subprocess
import time

# the line of each algorithm in `openssl speed` output: sign/s, then verify/s
LINES = {"ecdsap256": r"256 bits ecdsa \(nistp256\)", "rsa2048": r"rsa\s+2048 bits"}


def verify_per_s(algorithm: str) -> float:
    text = subprocess.run(["openssl", "speed", "-seconds", "2", algorithm], capture_output=True, text=True,
                          check=True).stdout
    m = re.search(LINES[algorithm] + r"\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", text)
    return float(m.group(2))


def rate(fn, seconds: float) -> float:
    """Calls of fn per CPU second, over `seconds` of wall time, as `openssl speed` counts."""
    n, end, cpu = 0, time.perf_counter() + seconds, time.process_time()
    while time.perf_counter() < end:
        for _ in range(50):
            fn()
        n += 50
    return n / (time.process_time() - cpu)
