"""Run the Graph emulator in the foreground.

    python -m emulators.graph --port 8443 --tls-dir DIR [--seed FILE] [--latency-ms N]
                              [--state-file FILE] [--page-size N] [--verbose]

When ready it prints one JSON line (port, base_url, authority, ca_file, airflow_conn_json,
...) and writes the same JSON to --state-file (atomically; removed again on exit). SIGTERM
and SIGINT stop it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulators.common.cli import run
from emulators.graph.server import GraphEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.graph", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-dir", type=Path, required=True, help="CA and certificate (reused)")
    parser.add_argument(
        "--seed", type=Path, help="seed JSON: {'mailboxes': {address: {'events': [...]}}}"
    )
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--state-file", type=Path)
    parser.add_argument("--client-id", default="calsync-client")
    parser.add_argument("--client-secret", default="s3cr3t")
    parser.add_argument("--tenant-id", default="tenant-1")
    parser.add_argument("--rng-seed", type=int, default=0, help="seed of the fault RNG")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    return run(
        args,
        lambda: GraphEmulator(
            tls_dir=args.tls_dir,
            port=args.port,
            host=args.host,
            client_id=args.client_id,
            client_secret=args.client_secret,
            tenant_id=args.tenant_id,
            page_size=args.page_size,
            latency_ms=args.latency_ms,
            seed=args.rng_seed,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
