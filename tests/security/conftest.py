"""Security tests reuse the integration tests' fixtures (test config, Graph emulator)."""

from tests.integration.conftest import config, graph  # noqa: F401
