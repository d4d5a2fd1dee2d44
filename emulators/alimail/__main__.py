"""Run the Alibaba Mail emulator in the foreground.

    python -m emulators.alimail --port 8444 --tls-dir DIR [--seed FILE] [--state-file FILE]
                                [--app-id ID] [--app-secret SECRET] [--token-lifetime S]
                                [--page-size N] [--latency-ms N] [--verbose]

When ready it prints one JSON line (port, endpoint, ca_file, app_id, airflow_conn_json, ...)
and writes the same JSON to --state-file (atomically; removed again on exit). SIGTERM and
SIGINT stop it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulators.alimail.server import DEFAULT_APP_ID, DEFAULT_APP_SECRET, AlimailEmulator
from emulators.common.cli import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.alimail", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8444, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-dir", type=Path, required=True, help="CA and certificate (reused)")
    parser.add_argument("--seed", type=Path, help="seed JSON: {'mailboxes': {address: {...}}}")
    parser.add_argument("--state-file", type=Path)
    parser.add_argument("--app-id", default=DEFAULT_APP_ID)
    parser.add_argument("--app-secret", default=DEFAULT_APP_SECRET)
    parser.add_argument("--token-lifetime", type=float, default=7200, help="seconds")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--rng-seed", type=int, default=0, help="seed of the fault RNG")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    return run(
        args,
        lambda: AlimailEmulator(
            tls_dir=args.tls_dir,
            port=args.port,
            host=args.host,
            app_id=args.app_id,
            app_secret=args.app_secret,
            token_lifetime_s=args.token_lifetime,
            page_size=args.page_size,
            latency_ms=args.latency_ms,
            seed=args.rng_seed,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
