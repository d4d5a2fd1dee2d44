"""The bad-input corpus reuses the integration tests' fixtures (test config, Graph emulator)."""

from tests.integration.conftest import config, graph, graph_server  # noqa: F401
