"""An ASGI application, served by uvicorn (PyPI, pinned in tests/requirements.txt), that reports
every request and WebSocket handshake it receives.

Run uvicorn at its defaults (h11 for HTTP, the `websockets` package for WebSocket), with the
report file in the environment:

    PORTCULLIS_UPSTREAM_REPORT=REPORT_FILE tests/.venv/bin/python -m uvicorn upstream_asgi:app \
        --app-dir tests/peers --host 127.0.0.1 --port 0

uvicorn logs `Uvicorn running on http://127.0.0.1:PORT` on stderr when it is ready.

For every HTTP request, once its body has been received and before it answers, the application
appends one JSON line to REPORT_FILE with what the ASGI scope gave it, unchanged:

    {"server": "uvicorn", "type": "http", "request_line": "METHOD RAW_PATH[?QUERY] HTTP/1.1",
     "path": scope["raw_path"], "query": scope["query_string"],
     "headers": [[name, value], ...], "body": "..."}

`headers` is `scope["headers"]`: every header line in arrival order (names lower-cased by the
server), a repeated header once per line; uvicorn has already decoded a chunked body. Bytes are
shown as Latin-1 text, the body as UTF-8. The answer is `200 text/plain` "reported\n".

A WebSocket handshake is reported the same way (`"type": "websocket"`, method `GET` as RFC 6455
requires, no body) when the application receives `websocket.connect`; it then accepts and
answers every text message with the same text in upper case.
"""

import json
import os

REPORT = os.environ["PORTCULLIS_UPSTREAM_REPORT"]


def text(raw):
    return raw.decode("latin-1")


def report(scope, method, body):
    target = text(scope["raw_path"])
    if scope["query_string"]:
        target += "?" + text(scope["query_string"])
    entry = {
        "server": "uvicorn",
        "type": scope["type"],
        "request_line": f"{method} {target} HTTP/{scope['http_version']}",
        "path": text(scope["raw_path"]),
        "query": text(scope["query_string"]),
        "headers": [[text(name), text(value)] for name, value in scope["headers"]],
        "body": body.decode("utf-8", "replace"),
    }
    with open(REPORT, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        report(scope, scope["method"], body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"reported\n"})
    elif scope["type"] == "websocket":
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        report(scope, "GET", b"")
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"].upper()})
