"""``POST /v1.0/$batch``: Graph's JSON batching, as documented for v1.0.

The body is ``{"requests": [{"id", "method", "url", "headers"?, "body"?}, ...]}`` with at most
20 requests (more: 400) and unique ids; ``url`` is relative to the version (``/users/...`` or
``users/...``). The answer is 200 with ``{"responses": [{"id", "status", "headers", "body"}]}``,
one per request: each request succeeds or fails on its own.

Authentication and the injected latency apply to the batch (the sub-requests run side by
side on the service); the token is checked again for each sub-request after the latency, so a
token that expires while a batch runs fails its sub-requests with 401. Everything else
applies per sub-request, as on Graph: the Retry-After window of (client, mailbox), the
per-mailbox concurrency limit (every sub-request is counted in flight for its mailbox while
the batch runs, so a batch of six for one mailbox gets 429 ApplicationThrottled with
Retry-After for the fifth and sixth), ``fail_next`` (matched against the sub-request's URL)
and random faults. Sub-requests count in the stats' ``by_kind``, ``by_mailbox``,
``by_status``, ``requests`` and ``batched_requests``; ``batches`` counts the batch itself
(HTTP round trips = requests - batched_requests + batches). ``dependsOn`` is not supported
(refused with 400).
"""

from __future__ import annotations

import time
from email.message import Message
from typing import TYPE_CHECKING, Any

import orjson

from emulators.graph.faults import Verdict
from emulators.graph.wire import Request, Response, graph_error

if TYPE_CHECKING:
    from emulators.graph.api import GraphApi

MAX_REQUESTS = 20


class BatchError(ValueError):
    """The batch body cannot be served (answered 400 as a whole)."""


class BatchApi:
    def __init__(self, api: GraphApi) -> None:
        self.api = api

    def handle(self, req: Request, client: str) -> Response:
        try:
            subs = self._parse(req)
        except BatchError as exc:
            return graph_error(400, "BadRequest", str(exc))
        api = self.api
        throttle, stats = api.throttle, api.stats
        auth = req.headers.get("Authorization")
        # Admit every sub-request first (they run side by side): the Retry-After window as it
        # was before this batch, then the concurrency cap; refusals penalize only afterwards.
        routed = []
        for sub_id, sub in subs:
            kind, _user, mailbox = api.route(sub)
            stats.subrequest(kind, mailbox or None)
            verdict = throttle.check_window(client, mailbox) if mailbox else None
            routed.append((sub_id, sub, mailbox, verdict))
        api.expire_tokens_when_due()  # checked per sub-request after the batch's latency
        admitted: list[tuple[str, Request, str, Verdict | None]] = []
        entered: list[str] = []
        try:
            for sub_id, sub, mailbox, verdict in routed:
                if verdict is None and mailbox:
                    verdict = throttle.enter(mailbox)
                    if verdict is None:
                        entered.append(mailbox)
                admitted.append((sub_id, sub, mailbox, verdict))
            refused = {
                sub_id: api.verdict_response(verdict, client, mailbox)
                for sub_id, _sub, mailbox, verdict in admitted
                if verdict is not None
            }
            latency = throttle.faults.latency_ms
            if latency > 0:
                time.sleep(latency / 1000)
            responses = []
            for sub_id, sub, mailbox, _verdict in admitted:
                response = refused.get(sub_id)
                if response is None and api.authority.client_for(auth)[0] is None:
                    # the token expired while the batch ran: Graph authorizes each request
                    response = api.unauthorized("The access token has expired.")
                if response is None:
                    response = api.serve_entered(sub, client, mailbox)
                stats.status(response.status)
                responses.append(_entry(sub_id, response))
        finally:
            for mailbox in entered:
                throttle.leave(mailbox)
        return Response(200, {"responses": responses})

    def _parse(self, req: Request) -> list[tuple[str, Request]]:
        try:
            payload = req.json()
        except (ValueError, UnicodeDecodeError):
            raise BatchError("Unable to deserialize the batch request body.") from None
        requests = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(requests, list) or not requests:
            raise BatchError("The batch request body must have a non-empty 'requests' array.")
        if len(requests) > MAX_REQUESTS:
            raise BatchError(
                f"The batch has {len(requests)} requests; the maximum is {MAX_REQUESTS}."
            )
        subs: list[tuple[str, Request]] = []
        seen: set[str] = set()
        for index, entry in enumerate(requests):
            if not isinstance(entry, dict):
                raise BatchError(f"requests[{index}] is not an object.")
            sub_id, method, url = entry.get("id"), entry.get("method"), entry.get("url")
            if not isinstance(sub_id, str) or not sub_id or sub_id in seen:
                raise BatchError(f"requests[{index}]: a missing or repeated id {sub_id!r}.")
            if not isinstance(method, str) or not isinstance(url, str) or not url:
                raise BatchError(f"requests[{index}] ({sub_id}): method and url are required.")
            if entry.get("dependsOn"):
                raise BatchError(f"requests[{index}] ({sub_id}): dependsOn is not supported.")
            if url.lower().startswith("http"):
                raise BatchError(f"requests[{index}] ({sub_id}): the url must be relative.")
            seen.add(sub_id)
            headers = Message()
            for name, value in (entry.get("headers") or {}).items():
                headers[name] = str(value)
            body = entry.get("body")
            raw = b"" if body is None else orjson.dumps(body)
            target = "/v1.0/" + url.lstrip("/")
            subs.append((sub_id, Request(method.upper(), target, headers, raw, host=req.host)))
        return subs


def _entry(sub_id: str, response: Response) -> dict[str, Any]:
    body = response.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace") or None
    headers = dict(response.headers)
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    entry: dict[str, Any] = {"id": sub_id, "status": response.status, "headers": headers}
    if body is not None:
        entry["body"] = body
    return entry
