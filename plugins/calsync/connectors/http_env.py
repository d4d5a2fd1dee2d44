"""A ``requests.Session`` that reads the environment's proxy and CA settings once per origin.

requests merges the environment into every request (``Session.merge_environment_settings``):
``get_environ_proxies`` walks ``os.environ`` twice and matches ``no_proxy`` for each call,
~0.18 ms of CPU per request here (more in a task process, whose environment is larger). The
Exchange and Alibaba Mail connectors send one request per change on a reverse drain, so that
was a tenth of their CPU. The settings come from the process environment, which calsync never
changes while a session lives; they are kept per (scheme, host:port, no_proxy) and merged
exactly as requests merges them (``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE`` and
``CURL_CA_BUNDLE`` still apply, ``trust_env = False`` still ignores them).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies

_Key = tuple[str, str, str | None]


class EnvOnceSession(requests.Session):
    """Also made from a plain Session by setting its ``__class__`` (exchangelib creates its
    own): the cache lives in the instance's dict, made on first use."""

    def _from_environment(
        self, url: str, no_proxy: str | None
    ) -> tuple[dict[str, str], str | None]:
        cache: dict[_Key, tuple[dict[str, str], str | None]]
        cache = self.__dict__.setdefault("_calsync_environment", {})
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, no_proxy)
        found = cache.get(key)
        if found is None:  # two threads may both read it: the same answer, kept once
            found = cache[key] = (
                get_environ_proxies(url, no_proxy=no_proxy),
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
            )
        return found

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        no_proxy = proxies.get("no_proxy") if proxies is not None else None
        env_proxies, env_bundle = self._from_environment(url, no_proxy)
        if proxies is not None:
            for name, value in env_proxies.items():
                proxies.setdefault(name, value)
        if verify is True or verify is None:
            verify = env_bundle or verify
        return {
            "proxies": merge_setting(proxies, self.proxies),
            "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify),
            "cert": merge_setting(cert, self.cert),
        }
