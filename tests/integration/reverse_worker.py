"""A reverse drain in its own process, for crash trials: `python -m tests.integration.reverse_worker
OA_URL CONFIG_YAML` drains once and exits 0. The test SIGKILLs it at a random moment."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]  # Airflow's env comes from the test process


def main() -> int:
    from calsync.config import parse_integration
    from calsync.oa.db import engine_from_url
    from tests.integration.reverse_helpers import ReverseRunner

    url, config_file = sys.argv[1], Path(sys.argv[2])
    config = parse_integration(config_file, config_file.read_text())
    ReverseRunner(engine_from_url(url), [config])(worker="doomed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
