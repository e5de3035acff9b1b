#!/usr/bin/env python3
"""Starts OpenID Connect sign-ins ahead of time for tests/bench/oidc.sh (not timed).

Each sign-in is what a browser does up to the provider's answer: GET the protected URL at the
gateway (a redirect to the provider's authorization endpoint, plus the cookie that binds the
sign-in to the browser: Portcullis's `portcullis-oidc-...`, mod_auth_openidc's
`mod_auth_openidc_state_<state>`), then GET that authorization URL at the provider
(tests/peers/oidc_forge.mjs answers at once with a 303 to the redirect URI with `code` and
`state`). What is left, the callback, is written as one line per sign-in,

    <path and query of the callback on the gateway> TAB <cookie name=value>

for the benchmark's wrk script to send, each line once. Every answer is checked; anything else
than the two redirects (and the cookie) stops the script with the answer.

Portcullis lets one address start 300 sign-ins per minute per route. The sign-ins are started from
a pool of loopback source addresses (127.0.1.1 to 127.0.1.254; Linux routes all of 127/8 to lo),
each used for at most --per-address sign-ins in a 62 s window (the gateway counts in fixed 60 s
windows from an address's first start); the windows are kept in --windows between runs, and
when every address is used up the script waits (never in practice: the pool allows about
60 000 a minute).

    oidc_signins.py --start URL --callback URL --cookie PREFIX --count N --out FILE --windows FILE
"""

import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

WINDOW = 62.0  # seconds; the gateway's window is 60 s from an address's first start
POOL = [f"127.0.1.{i}" for i in range(1, 255)]


def fail(message):
    sys.exit(f"oidc_signins.py: {message}")


class Sources:
    """Source addresses with the start of their current window and the sign-ins made in it."""

    def __init__(self, path, per_address):
        self.path = path
        self.per_address = per_address
        self.windows = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.windows = json.load(f)
        self.current = None

    def take(self, prefer=None):
        """An address that may start one more sign-in now (its window counts it): `prefer` (or
        the last one taken) while it may."""
        while True:
            now = time.time()
            current = prefer or self.current
            candidates = [current] if current else []
            candidates += [a for a in POOL if a != current]
            for address in candidates:
                start, used = self.windows.get(address, (0.0, 0))
                if now - start >= WINDOW:
                    start, used = now, 0  # recorded before the request: never later than the gateway's
                if used < self.per_address:
                    self.windows[address] = (start, used + 1)
                    self.current = address
                    return address
            earliest = min(start for start, _ in self.windows.values())
            time.sleep(max(0.1, earliest + WINDOW - now))

    def save(self):
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(self.windows, f)


class Connections:
    """Keep-alive HTTP/1.1 connections, one per (host, port, source address)."""

    def __init__(self):
        self.open = {}

    def get(self, url, source=None, headers=None):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http":
            fail(f"only http URLs: {url}")
        key = (u.hostname, u.port or 80, source)
        path = u.path + (f"?{u.query}" if u.query else "")
        for attempt in (1, 2):
            conn = self.open.get(key)
            if conn is None:
                conn = http.client.HTTPConnection(
                    u.hostname, u.port or 80, timeout=30, source_address=(source, 0) if source else None
                )
                self.open[key] = conn
            try:
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                body = response.read()
                return response, body
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed while idle: once more on a new one.
                conn.close()
                del self.open[key]
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close_source(self, source):
        for key in [k for k in self.open if k[2] == source]:
            self.open.pop(key).close()


def show(response, body):
    head = "\n".join(f"{k}: {v}" for k, v in response.getheaders())
    return f"{response.status} {response.reason}\n{head}\n\n{body[:500].decode('utf-8', 'replace')}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", required=True, help="the protected URL a browser asks for at the gateway")
    p.add_argument("--callback", required=True, help="the gateway's redirect URI, as registered at the provider")
    p.add_argument("--cookie", required=True, help="the name (or name prefix) of the browser-binding cookie")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--windows", required=True, help="JSON file keeping the source addresses' windows")
    p.add_argument("--user-agent", default="oidc-bench", help="the browser's User-Agent")
    p.add_argument("--per-address", type=int, default=250, help="sign-ins per address per window (< 300)")
    args = p.parse_args()

    callback = urllib.parse.urlsplit(args.callback)
    sources = Sources(args.windows, args.per_address)
    conns = Connections()
    # The callbacks are sent with the same User-Agent: mod_auth_openidc binds its state to it.
    browser = {"Accept": "text/html", "User-Agent": args.user_agent}
    lines = []
    started = time.monotonic()
    previous = None
    try:
        for _ in range(args.count):
            source = sources.take()
            if previous and source != previous:
                conns.close_source(previous)
            previous = source
            # 1. The protected URL: a redirect to the provider, and the binding cookie.
            response, body = conns.get(args.start, source, browser)
            if response.status not in (302, 303):
                fail(f"GET {args.start} from {source} did not redirect to the provider:\n{show(response, body)}")
            cookies = [
                c.split(";", 1)[0].strip()
                for name, c in response.getheaders()
                if name.lower() == "set-cookie" and c.startswith(args.cookie)
            ]
            authorize = response.getheader("location") or ""
            if len(cookies) != 1 or not authorize.startswith("http://"):
                fail(f"GET {args.start}: expected a Location at the provider and one {args.cookie}* cookie:\n{show(response, body)}")
            # 2. The provider's authorization endpoint: a 303 back to the redirect URI.
            response, body = conns.get(authorize, None, browser)
            back = response.getheader("location") or ""
            if response.status != 303 or not back.startswith(args.callback + "?") or "code=" not in back:
                fail(f"GET {authorize} did not answer a 303 to {args.callback}?code=...:\n{show(response, body)}")
            u = urllib.parse.urlsplit(back)
            if (u.hostname, u.port) != (callback.hostname, callback.port):
                fail(f"the callback {back} is not on {args.callback}")
            lines.append(f"{u.path}?{u.query}\t{cookies[0]}\n")
    finally:
        sources.save()
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(lines)
    elapsed = time.monotonic() - started
    used = len({a for a, (s, _) in sources.windows.items() if time.time() - s < WINDOW})
    print(f"{len(lines)} sign-ins started in {elapsed:.1f}s ({len(lines) / max(elapsed, 1e-9):.0f}/s), "
          f"from {used} source address(es) with a live window")


if __name__ == "__main__":
    main()
