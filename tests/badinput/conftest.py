"""The bad-input corpus reuses the integration tests' fixtures (test config, Graph emulator,
Airflow metadata DB and the include/ of a test DAG file)."""

from tests.integration.conftest import (  # noqa: F401
    airflow_db,
    airflow_oa,
    config,
    dag_env,
    graph,
    include_dir,
    seeded_oa,
)
