"""A local Alibaba Mail V2 open API emulator (calendar subset) over real HTTPS.

For tests, the demo and benchmarks; not part of the production package. It speaks the wire
format of ``calsync.connectors.alimail_wire`` (the one place where that format is written
down), so correcting the format there moves the emulator with the connector.

    emu = AlimailEmulator(tls_dir=Path("tls"), token_lifetime_s=5).start()
    emu.store.add_mailbox("alice@example.com")          # default "我的日历" + "项目日历"
    emu.store.add_event("alice@example.com", {...})     # wire JSON, default calendar
    os.environ["AIRFLOW_CONN_ALIMAIL"] = emu.airflow_conn_json()
    emu.faults.rate_429 = 0.3; emu.faults.retry_after_s = 1
    ... emu.stats["retry_after_violations"], emu.stats["notifications"] ...
    emu.stop()

Modules: ``server`` (HTTPS, AlimailEmulator, control API), ``api`` (routes), ``auth``
(tokens), ``store`` (mailboxes, calendars, events, recurrence), ``faults`` (faults, throttling,
stats). Run it alone with ``python -m emulators.alimail --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # the wire format lives in the calsync package (plugins/ is on sys.path under Airflow
    import calsync  # noqa: F401  and pytest); make a bare `python -m emulators.alimail` work too
except ImportError:  # pragma: no cover - depends on how the process was started
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from emulators.alimail.faults import FailSpec, Faults, Stats
from emulators.alimail.server import AlimailEmulator
from emulators.alimail.store import AlimailError, Store

__all__ = ["AlimailEmulator", "AlimailError", "FailSpec", "Faults", "Stats", "Store"]
