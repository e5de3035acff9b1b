"""An application on Python's standard `http.server` that reports every request it receives.

Run with Debian's `python3` (standard library only):

    python3 upstream_stdlib.py REPORT_FILE

A `BaseHTTPRequestHandler` subclass at the module's defaults (HTTP/1.0 answers, one request per
connection) on `ThreadingHTTPServer`, listening on 127.0.0.1 on a free port. When ready it prints
exactly one JSON line on stdout:

    {"base_url": "http://127.0.0.1:PORT", "pid": PID}

For every request, before it answers, it appends one JSON line to REPORT_FILE with what the
handler was given, unchanged:

    {"server": "http.server", "request_line": self.requestline, "path": ..., "query": ...,
     "headers": [[name, value], ...], "body": "..."}

`path` and `query` split `self.path` at the first `?`; `headers` is `self.headers.items()`: every
header line in arrival order, a repeated header once per line. The body is read by its
Content-Length, or decoded from `Transfer-Encoding: chunked` (the module leaves that to the
application); it is reported as UTF-8 text. The answer is `200 text/plain` "reported\n".

Logs go to stderr; SIGTERM stops it.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPORT = sys.argv[1]
LOCK = threading.Lock()


class Reporter(BaseHTTPRequestHandler):
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def report(self):
        path, _, query = self.path.partition("?")
        entry = {
            "server": "http.server",
            "request_line": self.requestline,
            "path": path,
            "query": query,
            "headers": [[name, value] for name, value in self.headers.items()],
            "body": self.read_body().decode("utf-8", "replace"),
        }
        with LOCK, open(REPORT, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        answer = b"reported\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = report


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Reporter)
    port = server.server_address[1]
    print(json.dumps({"base_url": f"http://127.0.0.1:{port}", "pid": os.getpid()}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
