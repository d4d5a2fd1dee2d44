"""A fork server for crash trials (issue 7): imports calsync, the Airflow hook and the test
helpers once, then for each request read from stdin forks a child that runs one forward sync
or reverse drain and SIGKILLs *itself* at the requested point — so a trial costs a fork, not
an interpreter start.

Request (one JSON line): ``{"direction": "forward"|"reverse", "oa_url": …, "config": PATH,
"point": P, "count": K, "delay_ms": D}``. Points (the K-th occurrence in the child):

- ``suite_write_before`` / ``suite_write_during`` / ``suite_write_after``: a suite write
  (create/update/delete) before it is sent, D ms after it was sent (the request in flight),
  after it returned (before the OA records it);
- ``suite_read_during``: D ms into a mailbox read (forward);
- ``oa_commit``: inside an OA transaction's commit, before COMMIT reaches the database;
- ``oa_after_commit``: right after an OA commit.

A child that never reaches the point finishes normally. Reply (one JSON line per request):
``{"pid": …, "killed": bool, "exit": code}``. The Airflow environment (connections, CA
bundle) comes from the test process's environment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

REPLY = "@@calsync-zygote "
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    def __init__(self, point: str, count: int, delay_ms: float) -> None:
        self.point, self.count, self.delay = point, count, delay_ms / 1000
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def hit(self, point: str) -> None:
        if point != self.point:
            return
        with self.lock:
            self.seen[point] = self.seen.get(point, 0) + 1
            if self.seen[point] != self.count:
                return
        if point.endswith("_during"):
            threading.Timer(self.delay, _die).start()
        else:
            _die()


def _install(counter: _Counter) -> None:
    import sqlalchemy as sa

    from calsync.connectors.graph import GraphConnector

    def wrap_write(name: str) -> None:
        real = getattr(GraphConnector, name)

        async def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.hit("suite_write_before")
            counter.hit("suite_write_during")
            result = await real(self, *args, **kwargs)
            counter.hit("suite_write_after")
            return result

        setattr(GraphConnector, name, wrapped)

    for name in ("create_event", "update_event", "delete_event"):
        wrap_write(name)
    for name in ("list_events", "list_changes"):
        real_read = getattr(GraphConnector, name)

        def make(real: Any) -> Any:
            async def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
                counter.hit("suite_read_during")
                return await real(self, *args, **kwargs)

            return wrapped

        setattr(GraphConnector, name, make(real_read))

    @sa.event.listens_for(sa.engine.Engine, "commit")
    def _commit(conn: Any) -> None:  # before the DBAPI commit: the transaction is open
        counter.hit("oa_commit")

    real_commit = sa.engine.Connection._commit_impl

    def commit_impl(self: Any) -> None:
        real_commit(self)
        counter.hit("oa_after_commit")

    sa.engine.Connection._commit_impl = commit_impl  # type: ignore[method-assign]


def _run(request: dict[str, Any]) -> None:
    from calsync.config import parse_integration
    from calsync.oa.db import engine_from_url
    from tests.integration.conftest import ForwardRunner
    from tests.integration.reverse_helpers import ReverseRunner

    _install(_Counter(request["point"], int(request["count"]), float(request["delay_ms"])))
    config_file = Path(request["config"])
    config = parse_integration(config_file, config_file.read_text())
    engine = engine_from_url(request["oa_url"])
    if request["direction"] == "forward":
        ForwardRunner(engine, config)()
    else:
        ReverseRunner(engine, [config])(worker="doomed")


def _reply(data: dict[str, Any]) -> None:
    """Replies are marked: imported libraries may print to stdout too."""
    sys.stdout.write(REPLY + json.dumps(data) + "\n")
    sys.stdout.flush()


def main() -> int:
    # everything the children need, imported once before any fork
    import calsync.connectors.graph
    import calsync.sync.forward
    import calsync.sync.reverse  # noqa: F401
    import tests.integration.conftest
    import tests.integration.reverse_helpers  # noqa: F401

    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run(request)
            except BaseException as exc:  # report, never fall back into the server loop
                print(f"crash child: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                code = 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        _reply({"pid": pid, "killed": killed, "exit": code})
    return 0


if __name__ == "__main__":
    sys.exit(main())
