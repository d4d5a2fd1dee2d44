"""Per-run counts through Airflow's metrics (StatsD, or whatever `[metrics]` configures).

Names: ``calsync.<direction>.<integration>.<action>`` counters (created, updated, deleted,
failed, held, conflict …) and ``calsync.<direction>.<integration>.failed_users`` /
``held_users`` gauges for forward runs; reverse drains add ``routed``/``echoes`` counters and a
``dead`` counter per integration. With metrics off (Airflow's default) this does nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

log = logging.getLogger("calsync")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def _name(*parts: str) -> str:
    return ".".join(_UNSAFE.sub("_", p) for p in parts)


def emit(
    direction: str,
    integration: str,
    counts: Mapping[str, int],
    gauges: Mapping[str, float] | None = None,
) -> None:
    try:
        from airflow.sdk.observability import stats
    except ImportError:  # outside Airflow (the CLI): nothing to emit to
        return
    try:
        for action, n in counts.items():
            if n:
                stats.incr(_name("calsync", direction, integration, action), count=int(n))
        for key, value in (gauges or {}).items():
            stats.gauge(_name("calsync", direction, integration, key), float(value))
    except Exception as exc:  # metrics must never fail a sync
        log.warning("could not emit metrics: %s", exc)
