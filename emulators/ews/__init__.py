"""A local Exchange Web Services (EWS) emulator, calendar subset, over real HTTP(S).

For tests, the demo and benchmarks: exchangelib talks to it exactly as to an on-premises
Exchange Server (SOAP 1.1 at ``/EWS/Exchange.asmx``, Basic or NTLM, impersonation). Not part of
the production package.

    emu = EwsEmulator(tls_dir=Path("tls")).start()        # tls_dir=None: plain HTTP
    emu.store.add_mailbox("alice@contoso.com", "Alice")
    emu.store.add_event("alice@contoso.com", {
        "subject": "Review", "start": "2026-12-01T09:00:00", "end": "2026-12-01T10:00:00",
        "timezone": "China Standard Time", "required_attendees": ["bob@contoso.com"]})
    emu.set_password("zhao4@exchange.com", "pw", mailbox="zhao4b@contoso.com")   # user mode
    emu.faults.rate_server_busy = 0.2; emu.faults.back_off_ms = 200
    ...
    emu.records[-1].messages        # what the last write's modes did
    emu.stop()

Modules: ``server`` (HTTP(S), EwsEmulator, accounts), ``auth`` (Basic, NTLMv2), ``service``
(the SOAP operations), ``fields`` (item XML ⇄ fields, shapes), ``store`` (mailboxes, folders,
series, delivery, sync states, records), ``recurrence``, ``faults`` (faults, throttling,
stats), ``wire`` (SOAP helpers). Run it alone with ``python -m emulators.ews --help``.
"""

from emulators.ews.faults import Faults, Stats
from emulators.ews.server import EwsEmulator
from emulators.ews.store import EwsError, Message, Record, Store

__all__ = ["EwsEmulator", "EwsError", "Faults", "Message", "Record", "Stats", "Store"]
