"""A local LINE Platform: the Messaging API endpoints mimamori uses, as LINE documents them, on loopback.

LINE's servers are not reachable from tests, so this server stands in for them and the real client code
(``line-bot-sdk`` through ``alerts.line.LineClient``) is what runs against it. What it implements, from the
Messaging API reference (developers.line.biz/en/reference/messaging-api/):

- ``POST /v2/bot/message/push``: bearer token; ``to`` and 1–5 messages; buttons template limits (1–4
  actions, label ≤ 20, text ≤ 160, postback data ≤ 300); ``X-Line-Retry-Key`` must be a UUID, and a key
  already accepted answers 409 with ``x-line-accepted-request-id`` ("Retry failed API requests").
- ``POST /v2/bot/message/reply``: a reply token this platform issued with a webhook event, usable once.
- ``GET /v2/bot/profile/{userId}``; ``GET /v2/bot/message/quota`` and ``/quota/consumption``.
- Webhooks to the bot: events signed with the channel secret (``X-Line-Signature``: base64 HMAC-SHA256 of
  the body), with ``webhookEventId`` and ``deliveryContext.isRedelivery``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "test-channel-access-token"
SECRET = "test-channel-secret"


@dataclass
class Pushed:
    to: str
    messages: list[dict[str, Any]]
    retry_key: str | None


@dataclass
class LinePlatform:
    token: str = TOKEN
    secret: str = SECRET
    monthly_limit: int = 200
    users: dict[str, str] = field(default_factory=dict)  # userId -> displayName
    pushed: list[Pushed] = field(default_factory=list)
    replied: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    fail_next_push_after_accepting: int = 0  # accept, then answer 500 (LINE's "it may have been delivered")
    webhook_url: str = ""
    _accepted: dict[str, str] = field(default_factory=dict)
    _reply_tokens: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the server -----------------------------------------------------------------------------------------
    def start(self) -> LinePlatform:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                platform._handle(self, "GET")

            def do_POST(self) -> None:
                platform._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="line-platform", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        length = int(req.headers.get("content-length") or 0)
        body = req.rfile.read(length) if length else b""
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return _send(req, 401, {"message": "Authentication failed. Confirm that the access token in the authorization "
                                               "header is valid."})
        path = req.path.split("?")[0]
        with self._lock:
            if method == "POST" and path == "/v2/bot/message/push":
                return self._push(req, body)
            if method == "POST" and path == "/v2/bot/message/reply":
                return self._reply(req, body)
            if method == "GET" and path.startswith("/v2/bot/profile/"):
                user = path.rsplit("/", 1)[1]
                if user not in self.users:
                    return _send(req, 404, {"message": "Not found"})
                return _send(req, 200, {"userId": user, "displayName": self.users[user], "language": "ja"})
            if method == "GET" and path == "/v2/bot/message/quota":
                return _send(req, 200, {"type": "limited", "value": self.monthly_limit})
            if method == "GET" and path == "/v2/bot/message/quota/consumption":
                return _send(req, 200, {"totalUsage": len(self.pushed)})
        return _send(req, 404, {"message": "Not found"})

    def _push(self, req: BaseHTTPRequestHandler, body: bytes) -> None:
        key = req.headers.get("x-line-retry-key")
        if key is not None:
            try:
                uuid.UUID(key)
            except ValueError:
                return _send(req, 400, {"message": "The value for the 'X-Line-Retry-Key' header is invalid"})
            if key in self._accepted:
                return _send(req, 409, {"message": "The retry key is already accepted", "sentMessages": []},
                             {"x-line-accepted-request-id": self._accepted[key]})
        try:
            payload = json.loads(body)
        except ValueError:
            return _send(req, 400, {"message": "The request body has 1 error(s)"})
        problem = _check_messages(payload.get("messages"))
        if not payload.get("to"):
            problem = "'to' is required"
        if problem:
            return _send(req, 400, {"message": "The request body has 1 error(s)", "details": [{"message": problem}]})
        if len(self.pushed) >= self.monthly_limit:
            return _send(req, 429, {"message": "You have reached your monthly limit."})
        request_id = uuid.uuid4().hex
        if key is not None:
            self._accepted[key] = request_id
        self.pushed.append(Pushed(payload["to"], payload["messages"], key))
        if self.fail_next_push_after_accepting:
            self.fail_next_push_after_accepting -= 1
            return _send(req, 500, {"message": "An error occurred on the server"})
        return _send(req, 200, {"sentMessages": [{"id": uuid.uuid4().hex[:18], "quoteToken": uuid.uuid4().hex}
                                                 for _ in payload["messages"]]}, {"x-line-request-id": request_id})

    def _reply(self, req: BaseHTTPRequestHandler, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        token = payload.get("replyToken")
        if token not in self._reply_tokens:
            return _send(req, 400, {"message": "Invalid reply token"})
        problem = _check_messages(payload.get("messages"))
        if problem:
            return _send(req, 400, {"message": "The request body has 1 error(s)", "details": [{"message": problem}]})
        self._reply_tokens.discard(token)
        self.replied.append((token, payload["messages"]))
        return _send(req, 200, {"sentMessages": [{"id": uuid.uuid4().hex[:18], "quoteToken": uuid.uuid4().hex}
                                                 for _ in payload["messages"]]})

    # -- webhooks to the bot ------------------------------------------------------------------------------------
    def event(self, user_id: str, kind: str, *, data: str | None = None, text: str | None = None,
              event_id: str | None = None, redelivery: bool = False) -> dict[str, Any]:
        reply_token = uuid.uuid4().hex
        with self._lock:
            self._reply_tokens.add(reply_token)
        event: dict[str, Any] = {
            "type": kind, "mode": "active", "timestamp": int(time.time() * 1000),
            "source": {"type": "user", "userId": user_id},
            "webhookEventId": event_id or uuid.uuid4().hex.upper()[:26],
            "deliveryContext": {"isRedelivery": redelivery}, "replyToken": reply_token,
        }
        if kind == "postback":
            event["postback"] = {"data": data}
        elif kind == "message":
            event["message"] = {"type": "text", "id": uuid.uuid4().hex[:18], "quoteToken": uuid.uuid4().hex, "text": text}
        return event

    def signed(self, events: list[dict[str, Any]], *, secret: str | None = None) -> tuple[bytes, str]:
        body = json.dumps({"destination": "U" + "0" * 32, "events": events}, ensure_ascii=False).encode()
        digest = hmac.new((secret or self.secret).encode(), body, hashlib.sha256).digest()
        return body, base64.b64encode(digest).decode()

    def deliver(self, events: list[dict[str, Any]], *, forged: bool = False) -> int:
        """POST events to the bot's webhook as LINE does; returns the HTTP status the bot answered."""
        body, signature = self.signed(events, secret="not-the-channel-secret" if forged else None)
        req = urllib.request.Request(self.webhook_url, data=body, method="POST",
                                     headers={"content-type": "application/json", "x-line-signature": signature})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not 1 <= len(messages) <= 5:
        return "messages: 1 to 5 message objects"
    for m in messages:
        if m.get("type") == "text" and not 0 < len(m.get("text", "")) <= 5000:
            return "text: 1 to 5000 characters"
        if m.get("type") == "template":
            t = m.get("template", {})
            actions = t.get("actions", [])
            if not m.get("altText") or len(m["altText"]) > 400:
                return "altText: 1 to 400 characters"
            if t.get("type") == "buttons":
                if not 1 <= len(actions) <= 4:
                    return "buttons: 1 to 4 actions"
                if len(t.get("text", "")) > (60 if t.get("title") else 160):
                    return "buttons text too long"
                for a in actions:
                    if not 0 < len(a.get("label", "")) <= 20:
                        return "action label: 1 to 20 characters"
                    if a.get("type") == "postback" and len(a.get("data", "")) > 300:
                        return "postback data: up to 300 characters"
    return None


def _send(req: BaseHTTPRequestHandler, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    req.send_response(status)
    req.send_header("content-type", "application/json")
    req.send_header("content-length", str(len(body)))
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.end_headers()
    req.wfile.write(body)
