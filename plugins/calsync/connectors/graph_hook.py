"""The Azure provider's msgraph hook, with the cloud's login host and scope as defaults.

The provider reads the login authority only from the connection's extras; an ``office365_cn``
integration whose connection leaves it out would otherwise log in at the global cloud.
Kept apart from ``graph.py`` so importing the connector does not import the provider.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from airflow.providers.microsoft.azure.hooks.msgraph import KiotaRequestAdapterHook

from calsync.connectors.graph import Cloud


class CloudGraphHook(KiotaRequestAdapterHook):
    cloud: Cloud

    def _build_request_adapter(self, connection: Any, config: dict[str, Any]) -> Any:
        merged = {"authority": self.cloud.login_host, **config}
        merged.setdefault("scopes", self.cloud.scope)
        # The bearer token goes only to the Graph host (kiota refuses an authority URL here).
        graph = urlparse(config.get("base_url") or self.cloud.graph_host).hostname
        merged.setdefault("allowed_hosts", graph)
        return super()._build_request_adapter(connection, merged)


def cloud_hook(conn_id: str, cloud: Cloud, timeout: float) -> CloudGraphHook:
    hook = CloudGraphHook(
        conn_id=conn_id, timeout=timeout, host=cloud.graph_host, scopes=[cloud.scope]
    )
    hook.cloud = cloud
    return hook
