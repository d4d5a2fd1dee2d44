"""The control API under ``/_emulator/`` (JSON, no auth, no faults, not in the stats).

POST   /_emulator/reset                              empty store, default faults, zero stats
POST   /_emulator/seed                               body: seed JSON (see Store.load_seed)
GET    /_emulator/stats
GET    /_emulator/faults  POST /_emulator/faults     body: fields of Faults to set
POST   /_emulator/expire-tokens                      issued tokens stop working
GET    /_emulator/state                              port, base_url, authority, ca_file
GET    /_emulator/mailboxes                          addresses
POST   /_emulator/mailboxes/{email}                  body: {"displayName"?}
GET    /_emulator/mailboxes/{email}/events           raw stored items
POST   /_emulator/mailboxes/{email}/events           body: Graph event  [?deliver=false]
PATCH  /_emulator/mailboxes/{email}/events/{id}      body: patch        [?deliver=false]
DELETE /_emulator/mailboxes/{email}/events/{id}                         [?deliver=false]
POST   /_emulator/mailboxes/{email}/events/{id}/move                 -> {"id": new id}
       body {"calendar": name | "default"}: to another calendar or back, id kept (immutable)
POST   /_emulator/mailboxes/{email}/events/{id}/cancel-occurrence    {"originalStart"}
POST   /_emulator/mailboxes/{email}/events/{id}/modify-occurrence    {"originalStart", "patch"}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emulators.graph.store import GraphError
from emulators.graph.wire import Request, Response, graph_error

if TYPE_CHECKING:
    from emulators.graph.server import GraphEmulator


class ControlApi:
    def __init__(self, emulator: GraphEmulator) -> None:
        self.emu = emulator

    def handle(self, req: Request) -> Response:
        try:
            return self._dispatch(req, req.segments[1:])
        except GraphError as exc:
            return graph_error(exc.status, exc.code, exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return graph_error(400, "BadRequest", f"{type(exc).__name__}: {exc}")

    def _dispatch(self, req: Request, parts: list[str]) -> Response:
        store = self.emu.store
        method = req.method
        deliver = req.query.get("deliver", "true").lower() not in ("false", "0", "no")
        body = req.json() if req.body.strip() else {}
        match (method, parts):
            case ("POST", ["reset"]):
                self.emu.reset()
                return Response(200, {"reset": True})
            case ("POST", ["seed"]):
                return Response(200, store.load_seed(body))
            case ("GET", ["stats"]):
                return Response(200, self.emu.stats.snapshot())
            case ("GET", ["faults"]):
                return Response(200, self.emu.faults.as_dict())
            case ("POST", ["faults"]):
                self.emu.faults.update(**body)
                return Response(200, self.emu.faults.as_dict())
            case ("POST", ["expire-tokens"]):
                self.emu.expire_tokens()
                return Response(200, {"expired": True})
            case ("GET", ["state"]):
                return Response(200, self.emu.state())
            case ("GET", ["mailboxes"]):
                return Response(200, {"mailboxes": store.mailboxes()})
            case ("POST", ["mailboxes", email]):
                box = store.add_mailbox(email, body.get("displayName"))
                return Response(201, {"email": box.email, "id": box.user_id})
            case ("GET", ["mailboxes", email, "events"]):
                return Response(200, {"value": store.events(email)})
            case ("POST", ["mailboxes", email, "events"]):
                return Response(201, store.add_event(email, body, deliver=deliver))
            case ("PATCH", ["mailboxes", email, "events", event_id]):
                return Response(200, store.update_event(email, event_id, body, deliver=deliver))
            case ("DELETE", ["mailboxes", email, "events", event_id]):
                store.delete_event(email, event_id, deliver=deliver)
                return Response(204)
            case ("POST", ["mailboxes", email, "events", event_id, "move"]):
                if body.get("calendar"):
                    moved = store.move_to_calendar(email, event_id, str(body["calendar"]))
                    return Response(200, {"id": moved})
                return Response(200, {"id": store.move_event(email, event_id)})
            case ("POST", ["mailboxes", email, "events", event_id, "cancel-occurrence"]):
                store.cancel_occurrence(email, event_id, body["originalStart"], deliver=deliver)
                return Response(204)
            case ("POST", ["mailboxes", email, "events", event_id, "modify-occurrence"]):
                result: Any = store.modify_occurrence(
                    email, event_id, body["originalStart"], body.get("patch") or {}, deliver
                )
                return Response(200, result)
        return graph_error(404, "NotFound", f"No control route {method} {req.raw_path}")
