"""The Azure provider's msgraph hook, with the cloud's login host and scope as defaults.

The provider reads the login authority only from the connection's extras; an ``office365_cn``
integration whose connection leaves it out would otherwise log in at the global cloud.
Kept apart from ``graph.py`` so importing the connector does not import the provider.

Re-authentication (token expiry mid-run): the provider's hook evicts *and closes* the cached
request adapter on every 401/403, so with several requests in flight each 401 closed the adapter
the previous one had just rebuilt, failing requests that were fine. Here only the adapter that
failed is evicted (once), and it is closed when the hook closes; the connector then repeats the
request once on a fresh adapter, i.e. with a new token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import orjson
from airflow.providers.microsoft.azure.hooks.msgraph import (
    DefaultResponseHandler,
    KiotaRequestAdapterHook,
)
from kiota_http.middleware.options import ResponseHandlerOption

from calsync.connectors.graph import Cloud


class OrjsonResponseHandler(DefaultResponseHandler):
    """The provider's response handler with the JSON body parsed by orjson."""

    @staticmethod
    def get_value(response: Any) -> Any:
        content = response.content
        if content:
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError:
                return content
        return dict(response.headers.items())


class CloudGraphHook(KiotaRequestAdapterHook):
    cloud: Cloud
    _retired: list[Any]

    def request_information(self, *args: Any, **kwargs: Any) -> Any:
        info = super().request_information(*args, **kwargs)
        key = ResponseHandlerOption.get_key()
        if key in info.request_options:  # no response_type: the provider's JSON handler
            info.request_options[key] = ResponseHandlerOption(
                response_handler=OrjsonResponseHandler()
            )
        return info

    async def send_request(self, request_info: Any, response_type: str | None = None) -> Any:
        adapter = await self.get_async_conn()
        try:
            self.log.info("Executing url '%s' as '%s'", request_info.url, request_info.http_method)
            if response_type:
                return await adapter.send_primitive_async(
                    request_info=request_info,
                    response_type=response_type,
                    error_map=self.error_mapping(),
                )
            return await adapter.send_no_response_content_async(
                request_info=request_info, error_map=self.error_mapping()
            )
        except (PermissionError, RuntimeError, ValueError) as exc:
            self.log.warning(
                "Request failed for conn_id '%s': %s. Retiring its request adapter.",
                self.conn_id,
                type(exc).__name__,
            )
            self._retire(adapter)
            raise

    def _retire(self, adapter: Any) -> None:
        """Evict ``adapter`` if it is still the cached one; close it with the hook."""
        cached = self.cached_request_adapters.get(self.conn_id, (None, None))[1]
        if cached is adapter:
            self.cached_request_adapters.pop(self.conn_id, None)
        if adapter not in self._retired:
            self._retired.append(adapter)

    async def close(self) -> None:
        retired, self._retired = self._retired, []
        for adapter in retired:
            if adapter is not self.cached_request_adapters.get(self.conn_id, (None, None))[1]:
                await _close_adapter(adapter)
        await super().close()

    def _build_request_adapter(self, connection: Any, config: dict[str, Any]) -> Any:
        merged = {"authority": self.cloud.login_host, **config}
        merged.setdefault("scopes", self.cloud.scope)
        # The bearer token goes only to the Graph host (kiota refuses an authority URL here).
        graph = urlparse(config.get("base_url") or self.cloud.graph_host).hostname
        merged.setdefault("allowed_hosts", graph)
        return super()._build_request_adapter(connection, merged)


async def _close_adapter(adapter: Any) -> None:
    """What the provider's ``close`` does to the cached adapter, for a retired one."""
    try:
        await adapter._http_client.aclose()
    finally:
        provider = adapter._authentication_provider
        await provider.access_token_provider._credentials._credential.close()


def cloud_hook(conn_id: str, cloud: Cloud, timeout: float) -> CloudGraphHook:
    hook = CloudGraphHook(
        conn_id=conn_id, timeout=timeout, host=cloud.graph_host, scopes=[cloud.scope]
    )
    hook.cloud = cloud
    hook._retired = []
    return hook
