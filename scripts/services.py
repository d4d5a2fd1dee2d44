"""Make sure the local services the tests use are up (PostgreSQL, MariaDB; Redis for the
Celery stack test); start a stopped one with the machine's own start command."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

SERVICES = {
    "postgresql": (
        5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start",
    ),
    "mariadb": (3306, "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"),
    "redis": (
        6379,
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ),
}


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def ensure(names: list[str]) -> int:
    failed = []
    for name in names:
        port, start = SERVICES[name]
        if reachable(port):
            continue
        print(f"{name} is down on 127.0.0.1:{port}; starting it", flush=True)
        subprocess.run(start, shell=True, check=False)  # noqa: S602 - fixed local command
        for _ in range(60):
            if reachable(port):
                break
            time.sleep(0.5)
        else:
            failed.append(name)
    for name in failed:
        print(f"{name} did not come up on 127.0.0.1:{SERVICES[name][0]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "ensure":
        sys.exit("usage: services.py ensure [postgresql mariadb redis]")
    sys.exit(ensure(args[1:] or list(SERVICES)))
