"""Run the EWS emulator in the foreground.

    python -m emulators.ews --port 8444 [--tls-dir DIR] [--seed FILE] [--state-file FILE]
                            [--auth basic|ntlm|both] [--latency-ms N] [--verbose]

When ready it prints one JSON line (port, service_endpoint, ca_file, service_login,
airflow_conn_json, ...) and writes the same JSON to --state-file (atomically; removed again on
exit). SIGTERM and SIGINT stop it cleanly (exit status 0). Without --tls-dir it serves HTTP.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulators.common.cli import run
from emulators.ews.server import DEFAULT_SERVICE_LOGIN, DEFAULT_SERVICE_PASSWORD, EwsEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.ews", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8444, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-dir", type=Path, help="CA and certificate (reused); none: HTTP")
    parser.add_argument("--seed", type=Path, help="seed JSON: {'mailboxes': {address: {...}}}")
    parser.add_argument("--state-file", type=Path)
    parser.add_argument("--auth", choices=("basic", "ntlm", "both"), default="both")
    parser.add_argument("--service-login", default=DEFAULT_SERVICE_LOGIN)
    parser.add_argument("--service-password", default=DEFAULT_SERVICE_PASSWORD)
    parser.add_argument("--no-impersonation", action="store_true", help="refuse impersonation")
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--rng-seed", type=int, default=0, help="seed of the fault RNG")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    return run(
        args,
        lambda: EwsEmulator(
            tls_dir=args.tls_dir,
            port=args.port,
            host=args.host,
            service_login=args.service_login,
            service_password=args.service_password,
            impersonation_allowed=not args.no_impersonation,
            auth=args.auth,
            latency_ms=args.latency_ms,
            seed=args.rng_seed,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
