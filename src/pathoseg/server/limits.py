"""Request limits: a body size limit, enforced before anything parses the body or checks the
token, and a login throttle for clients that keep sending wrong tokens."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes the limit; answered with 413."""


class BodySizeLimit:
    """Pure ASGI middleware: bodies over ``max_bytes`` get ``413 {"detail": ...}``.

    A declared ``Content-Length`` over the limit is refused before the app runs; a body
    without one (chunked) is counted as it streams and reading stops at the limit, so the
    handler never sees it, whatever the app does with the exception raised into it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"request body larger than {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if lengths:
            try:
                declared = max(int(v) for v in lengths)
            except ValueError:
                await self._answer(send, 400, "invalid Content-Length header")
                return
            if declared > self.max_bytes:
                await self._answer(send, 413, self.detail)
                return

        received = 0
        too_large = False  # set once the body passed the limit
        started = False  # the app's own response began (before the body passed the limit)
        answered = False  # our 413 went out instead of the app's response

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                raise BodyTooLarge(self.detail)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge(self.detail)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, answered
            if too_large and not started:  # the app answered the broken read (400, 500...): say 413
                if not answered:
                    answered = True
                    await self._answer(send, 413, self.detail)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:  # BodyTooLarge itself, or whatever the app made of it
            if not too_large:
                raise
            if not started and not answered:
                await self._answer(send, 413, self.detail)

    @staticmethod
    async def _answer(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# The editor runs from its own files only: no inline script or style, no framing (clickjacking),
# images from the API as blobs. FastAPI's /docs page needs its inline script and CDN assets, so
# it gets the framing and sniffing rules but not the script policy.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer")]
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


class SecurityHeaders:
    """Pure ASGI middleware: every response gets the security headers (and, outside the API
    docs, the Content-Security-Policy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope.get("path", "").startswith(DOCS_PATHS)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                ours = {name for name, _ in SECURITY_HEADERS}
                headers = [h for h in message.get("headers", []) if h[0].lower() not in ours] + SECURITY_HEADERS
                if not docs:
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class LoginThrottle:
    """After ``attempts`` failed token checks from one client within ``window`` seconds, that
    client's wrong tokens get 429 (with ``Retry-After``) until the oldest failure leaves the
    window; a good token still works (see ``deps.current_user``), and a success does not clear
    the failures, so one valid token does not buy an attacker more guesses at another. Clients
    are told apart by address: the connection's, or behind a reverse proxy the forwarded one,
    trusted only from the proxies ``pathoseg serve --trusted-proxies`` names."""

    MAX_CLIENTS = 10_000  # beyond this many clients with recent failures, the stalest are forgotten

    def __init__(self, attempts: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if attempts < 1 or window <= 0:
            raise ValueError("the login throttle needs attempts >= 1 and window > 0")
        self.attempts, self.window, self.clock = attempts, window, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        with self._lock:
            failures = self._recent(client, self.clock())
            if failures is None or len(failures) < self.attempts:
                return 0
            return max(1, math.ceil(failures[-self.attempts] + self.window - self.clock()))

    def failed(self, client: str) -> None:
        with self._lock:
            moment = self.clock()
            failures = self._recent(client, moment)
            if failures is None:
                if len(self._failures) >= self.MAX_CLIENTS:
                    self._forget_stale(moment)
                failures = self._failures[client] = deque(maxlen=self.attempts)
            failures.append(moment)

    def _recent(self, client: str, moment: float) -> deque[float] | None:
        failures = self._failures.get(client)
        while failures and failures[0] <= moment - self.window:
            failures.popleft()
        if failures is not None and not failures:
            del self._failures[client]
            return None
        return failures

    def _forget_stale(self, moment: float) -> None:
        for client in list(self._failures):
            self._recent(client, moment)
        while len(self._failures) >= self.MAX_CLIENTS:  # all recent: drop the longest-quiet ones
            del self._failures[min(self._failures, key=lambda c: self._failures[c][-1])]
