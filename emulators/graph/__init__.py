"""A local Microsoft Graph (Office 365 calendar subset) emulator over real HTTPS.

For tests, the demo and benchmarks: the Airflow provider's msgraph hook and azure-identity
talk to it exactly as to Graph. Not part of the production package.

    emu = GraphEmulator(tls_dir=Path("tls")).start()
    emu.store.add_event("alice@contoso.com", {...})      # Graph event JSON
    os.environ["AIRFLOW_CONN_GRAPH"] = emu.airflow_conn_json()
    ...
    emu.stop()

Modules: ``server`` (HTTPS, GraphEmulator), ``api`` (Graph routes), ``control``
(``/_emulator/``), ``auth`` (tokens, discovery), ``store`` (mailboxes, delivery, series),
``recurrence``, ``render`` (wire form), ``faults`` (faults, throttling, stats).
Run it alone with ``python -m emulators.graph --help``.
"""

from emulators.graph.faults import Faults, Stats
from emulators.graph.server import GraphEmulator
from emulators.graph.store import GraphError, Store

__all__ = ["Faults", "GraphEmulator", "GraphError", "Stats", "Store"]
