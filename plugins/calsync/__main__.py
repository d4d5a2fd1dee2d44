"""``python -m calsync`` (with ``plugins/`` on the path): the ``calsync`` command.

Connections: Airflow's environment variables (``AIRFLOW_CONN_*``) and, as the Airflow CLI
does, the metadata database of ``AIRFLOW_HOME`` (plus any secrets backend configured there).
"""

import os
import sys

# Outside a task the Task SDK reads connections from the environment only; the "server"
# context adds the metadata database, where `airflow connections add` puts them.
os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
# Airflow's (structlog) logging: warnings and up unless asked for (calsync.cli.quiet_logging)
if not os.environ.get("CALSYNC_VERBOSE"):
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"

from calsync.cli import main

sys.exit(main(configure_logging=True))
