"""How every benchmark figure is reported: min, median and max of repeated runs."""
from __future__ import annotations

import statistics


def summary(samples: list[float]) -> dict:
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples), "n": len(samples)}
