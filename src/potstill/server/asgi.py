"""Two ASGI-level guards the chat endpoint needs: drain an unread request body, and notice a client leaving.

    app.add_middleware(DrainUnreadBody)           # every error reply (413, 401, ...) reaches a client still sending
    await wait_for_disconnect(request.receive)    # returns when the client closes its connection

A server that answers while the client is still sending, then closes, resets the connection: the client sees
"connection reset" instead of the 413 it was sent. So before a response starts, whatever body the app left
unread is read and dropped (up to ``drain_max`` bytes; past that the connection is closed, as before).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DRAIN_MAX_BYTES = 64 << 20  # read and drop at most this much of a refused body so the client can read the reply


class DrainUnreadBody:
    """ASGI middleware: read and drop the rest of the request body before the response starts."""

    def __init__(self, app: Any, drain_max: int = DRAIN_MAX_BYTES) -> None:
        self.app, self.drain_max = app, drain_max

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        too_big = declared.isdigit() and int(declared) > self.drain_max
        expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"  # no body sent unless we ask
        done = False

        async def recv() -> Message:
            nonlocal done
            msg = await receive()
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                done = True
            return msg

        async def snd(msg: Message) -> None:
            if msg["type"] == "http.response.start" and not done and not expects_continue:
                drained = 0
                while not done and not too_big and drained <= self.drain_max:
                    drained += len((await recv()).get("body", b""))
                if not done:  # too much to read: say we close, so a client does not reuse the connection
                    msg = {**msg, "headers": [*msg.get("headers", []), (b"connection", b"close")]}
            await send(msg)

        await self.app(scope, recv, snd)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call after the body is read: body messages are dropped)."""
    with contextlib.suppress(Exception):  # a receive that fails means the connection is gone too
        while (await receive())["type"] != "http.disconnect":
            pass
