"""A request body size limit, enforced before anything parses the body or checks the token."""

from __future__ import annotations

import json

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
