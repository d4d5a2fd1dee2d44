"""``AlimailHttp._send``: the request it hands the adapter is the one ``Session.request``
would send; cookies, redirects and proxies behave as its docstring says."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from calsync.connectors import alimail_wire as wire
from calsync.connectors.alimail_http import AlimailHttp, Credentials

BODY = {"event": {"summary": "周会 <b>", "attendees": [{"email": "a@x.com"}], "n": 1.5}}


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]
    answers: list[tuple[int, dict[str, str]]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(
            {
                "line": self.requestline,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        if self.path.endswith(wire.TOKEN_PATH):
            status, extra = 200, {}
            payload = {wire.TOKEN_ACCESS: "tok", wire.TOKEN_EXPIRES_IN: 3600}
        else:
            status, extra = self.answers.pop(0) if self.answers else (200, {})
            payload = {"ok": True}
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"seen": [], "answers": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client(endpoint: str) -> AlimailHttp:
    return AlimailHttp(endpoint, Credentials("app", "secret"), "calsync_alimail")


def _comparable(request: dict[str, Any]) -> tuple[str, dict[str, str], Any]:
    """Request line, headers (User-Agent and Accept-Encoding included: both paths take the
    session's) and the body as JSON."""
    body = json.loads(request["body"]) if request["body"] else None
    return request["line"], request["headers"], body


@pytest.mark.parametrize(
    ("method", "params", "body"),
    [
        ("POST", {"notify": "false"}, BODY),
        ("POST", None, None),
        ("GET", {"startTime": "2026-12-01T00:00:00+08:00", "q": "a b&c"}, None),
        ("PUT", None, BODY),
        (wire.UPDATE_METHOD, {"notify": "false"}, BODY),
        ("patch", None, BODY),  # as requests does: the method upper-cased
        ("DELETE", {"notify": "true"}, None),
    ],
)
def test_the_request_is_the_one_session_request_sends(
    server: tuple[str, type[_Recorder]],
    method: str,
    params: dict[str, str] | None,
    body: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    endpoint, handler = server
    client = _client(endpoint)
    url = endpoint + "/v2/users/a%40x.com/calendars/c%2F1/events"
    client._send(method, url, params, body, "tok").close()
    client.session.request(
        method,
        url,
        params=params,
        json=body,
        headers={"Authorization": f"{wire.AUTH_SCHEME} tok", "Accept": "application/json"},
        timeout=5,
    ).close()
    lean, reference = (_comparable(r) for r in handler.seen)
    assert lean[0] == reference[0]  # request line: method, path, query
    assert lean[2] == reference[2]  # the same JSON (orjson writes UTF-8, requests \\u escapes)
    if body is None:
        assert lean[1] == reference[1]
    else:
        assert {k: v for k, v in lean[1].items() if k != "content-length"} == {
            k: v for k, v in reference[1].items() if k != "content-length"
        }
        assert int(lean[1]["content-length"]) == len(handler.seen[0]["body"])
    assert lean[1]["authorization"] == "bearer tok"


def test_a_cookie_the_api_sets_is_sent_back(server: tuple[str, type[_Recorder]]) -> None:
    endpoint, handler = server
    handler.answers.append((200, {"Set-Cookie": "acw_tc=abc; Path=/"}))
    client = _client(endpoint)
    for _ in range(2):
        status, _ = client.call("event_get", "GET", "/v2/users/a%40x.com/calendars")
        assert status == 200
    api = [r for r in handler.seen if not r["line"].split()[1].endswith(wire.TOKEN_PATH)]
    assert "cookie" not in api[0]["headers"]
    assert api[1]["headers"]["cookie"] == "acw_tc=abc"


def test_a_redirect_is_answered_not_followed(server: tuple[str, type[_Recorder]]) -> None:
    endpoint, handler = server
    handler.answers.append((302, {"Location": "http://127.0.0.1:9/elsewhere"}))
    client = _client(endpoint)
    response = client._send("GET", endpoint + "/v2/users/a%40x.com/calendars", None, None, "tok")
    assert response.status_code == 302
    assert len(handler.seen) == 1  # nothing sent to the Location, the token least of all


def test_the_proxy_environment_is_honoured(
    server: tuple[str, type[_Recorder]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, handler = server  # the recorder stands in for the proxy: it sees absolute URIs
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    client = _client("http://alimail.example.test")
    response = client._send(
        "POST", "http://alimail.example.test/v2/users/a%40x.com/events", None, BODY, "tok"
    )
    assert response.status_code == 200
    assert handler.seen[0]["line"].startswith(
        "POST http://alimail.example.test/v2/users/a%40x.com/events "
    )


def test_transport_errors_are_requests_exceptions() -> None:
    client = _client("http://127.0.0.1:9")
    with pytest.raises(requests.ConnectionError):
        client._send("GET", "http://127.0.0.1:9/v2/users", None, None, "tok")
