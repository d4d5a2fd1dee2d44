"""``EnvOnceSession`` merges the environment as requests does, reading it once per origin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import requests.utils

from calsync.connectors import http_env
from calsync.connectors.http_env import EnvOnceSession

URLS = [
    "https://ews.corp.example.com/EWS/Exchange.asmx",
    "https://EWS.corp.example.com:443/EWS/Exchange.asmx?x=1",
    "http://127.0.0.1:8080/v2/users/a@x.com/calendars",
    "https://alimail-cn.aliyuncs.com/v2/users",
    "https://intranet.local/ews",
]
ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"HTTPS_PROXY": "http://proxy:3128", "HTTP_PROXY": "http://proxy:3128"},
    {"https_proxy": "http://p2:8080", "no_proxy": "127.0.0.1,.local"},
    {"ALL_PROXY": "socks5://s:1080", "NO_PROXY": "*"},
    {"REQUESTS_CA_BUNDLE": "/etc/ssl/corp.pem"},
    {"CURL_CA_BUNDLE": "/etc/ssl/curl.pem", "HTTPS_PROXY": "http://proxy:3128"},
]
NAMES = {name for env in ENVIRONMENTS for name in env}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Any:
    def apply(values: dict[str, str]) -> None:
        for name in NAMES | {n.upper() for n in NAMES} | {n.lower() for n in NAMES}:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return apply


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=lambda e: ",".join(e) or "none")
@pytest.mark.parametrize("trust_env", [True, False])
def test_settings_are_the_ones_requests_merges(
    environment: Any, env: dict[str, str], trust_env: bool
) -> None:
    environment(env)
    plain, ours = requests.Session(), EnvOnceSession()
    for session in (plain, ours):
        session.trust_env = trust_env
        session.proxies = {"ftp": "http://session-proxy:1"}
    for url in URLS * 2:  # the second round comes from the cache
        for proxies, verify in (({}, None), ({"no_proxy": "example.com"}, True), ({}, "/x.pem")):
            want = plain.merge_environment_settings(url, dict(proxies), None, verify, None)
            got = ours.merge_environment_settings(url, dict(proxies), None, verify, None)
            assert got == want, (url, proxies, verify)


def test_the_environment_is_read_once_per_origin(
    environment: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment({"HTTPS_PROXY": "http://proxy:3128"})
    reads: list[str] = []

    def counted(url: str, no_proxy: str | None = None) -> dict[str, str]:
        reads.append(url)
        return requests.utils.get_environ_proxies(url, no_proxy=no_proxy)

    monkeypatch.setattr(http_env, "get_environ_proxies", counted)
    session = EnvOnceSession()
    for _ in range(50):
        session.merge_environment_settings(URLS[0], {}, None, None, None)
        session.merge_environment_settings(URLS[2], {}, None, None, None)
    assert len(reads) == 2


def test_exchangelib_sessions_are_env_once(environment: Any) -> None:
    from exchangelib.protocol import BaseProtocol

    import calsync.connectors.exchange  # noqa: F401  (installs it)

    environment({"HTTPS_PROXY": "http://proxy:3128"})
    session = BaseProtocol.raw_session("https://ews.example.com/EWS/Exchange.asmx")
    assert type(session) is EnvOnceSession
    settings = session.merge_environment_settings(URLS[0], {}, None, None, None)
    assert settings["proxies"]["https"] == "http://proxy:3128"


def test_a_netrc_entry_never_replaces_the_alibaba_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests gives a session without auth the ``~/.netrc`` entry of the host as Basic
    auth, over the Authorization header; the Alibaba Mail client's token stays."""
    from calsync.connectors.alimail_http import AlimailHttp, Credentials

    netrc = tmp_path / "netrc"
    netrc.write_text("machine mail.example.com login someone password not-the-token\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    request = requests.Request(
        "GET", "https://mail.example.com/v2/users", headers={"Authorization": "bearer tok"}
    )
    plain = EnvOnceSession().prepare_request(request)
    assert plain.headers["Authorization"].startswith("Basic ")  # what the test guards against
    client = AlimailHttp("https://mail.example.com", Credentials("app", "secret"), "conn")
    assert client.session.prepare_request(request).headers["Authorization"] == "bearer tok"
