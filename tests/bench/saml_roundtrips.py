"""SP-initiated SAML sign-ins, end to end, for tests/bench/saml.sh (run with tests/.venv/bin/python).

    saml_roundtrips.py --start URL --sso URL --sp-metadata URL --key idp.key --cert idp.crt \
        --issuer IDP_ENTITY_ID --cookie NAME --count N [--connections 32] [--windows FILE] \
        [--tag TAG] [--check] [--session-out FILE]

Each sign-in is what a browser and the IdP do together, timed as a whole:

1. the browser GETs the protected URL --start at the SP, and follows the SP's redirects on its
   own origin (mellon first sends it to its /mellon/login) until one leads to the IdP's --sso
   URL: the AuthnRequest, HTTP-Redirect binding (SAMLRequest, RelayState, SigAlg, Signature);
2. the IdP (this script, as a real IdP does it) verifies the request's signature with the
   signing certificate of the SP's metadata (--sp-metadata, read once at start), inflates and
   parses it, checks its Issuer (the SP's entity id), Destination (--sso) and
   AssertionConsumerServiceURL (the metadata's ACS, if named), and answers it with a fresh
   Response to that request's ID (InResponseTo), signed as tests/bench/saml_responses.py signs
   (`response_xml`: Assertion and Response, RSA-SHA256);
3. the browser POSTs it to the ACS with the RelayState it was given and the cookies the SP set,
   and must get a 303 to the protected URL setting the session cookie --cookie.

The AuthnRequest's ID is random, so no Response can be signed ahead: the IdP's work (one RSA
verification and two RSA signatures per sign-in) runs here, inside the timed window, on the
client's core (saml.sh pins this script to the core wrk uses; the SP has the other). --connections
browsers run at once, each on a keep-alive connection of its own; the time runs from the first
request sent to the last answer received.

Portcullis lets one address start 300 sign-ins a minute per route: each connection is bound to a
loopback source address of oidc_signins.py's pool, taking another when its address has started
its share of the window (windows kept in --windows across runs).

Prints the line lib.sh's check_run reads, `BENCH requests=N elapsed_us=... p99_us=... checked=N
total=N bad=0 connect=0 read=0 write=0 status=0 timeout=0 hops=...` (p99 of the whole sign-in),
and `FIRST_BAD ...` with the first wrong answer. --check also has pysaml2 (xmlsec1) accept the
first Response as an SP would, with the request outstanding; --session-out writes the last
sign-in's session cookie (`name=value`).
"""

import argparse
import asyncio
import base64
import http.client
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

import saml_responses
from oidc_signins import Sources

NS = {
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "samlp": saml_responses.NS_SAMLP,
    "saml": saml_responses.NS_SAML,
}
SIG_ALGS = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": hashes.SHA256,
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1": hashes.SHA1,
}
POST_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
MAX_HOPS = 4
TIMEOUT = 30.0


class Wrong(Exception):
    """A wrong answer: the sign-in counts as bad."""


class Broken(Exception):
    """A socket error or timeout; kind is connect, read or timeout."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client over asyncio streams: one keep-alive connection per browser.


class Connection:
    def __init__(self, host, port, source):
        self.host, self.port, self.source = host, port, source
        self.reader = self.writer = None

    async def open(self):
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, local_addr=(self.source, 0)), TIMEOUT
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise Broken("connect", f"connecting from {self.source}: {e!r}") from e

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method, target, headers, body=b""):
        """Sends one request; answers (status, [(name, value)], body)."""
        if self.writer is None:
            await self.open()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        try:
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            return await asyncio.wait_for(self._response(method), TIMEOUT)
        except asyncio.TimeoutError as e:
            self.close()
            raise Broken("timeout", f"{method} {target}: no answer in {TIMEOUT:.0f} s") from e
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            self.close()
            raise Broken("read", f"{method} {target}: {e!r}") from e

    async def _response(self, method):
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        version, status = status_line.split(" ", 2)[:2]
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
        fields = {k.lower(): v for k, v in headers}
        if method == "HEAD" or int(status) in (204, 304):
            body = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        elif "content-length" in fields:
            body = await self.reader.readexactly(int(fields["content-length"]))
        else:
            body = await self.reader.read()
            self.close()
        if fields.get("connection", "").lower() == "close" or (version == "HTTP/1.0" and "keep-alive" not in fields.get("connection", "").lower()):
            self.close()
        return int(status), headers, body


def shown(status, headers, body):
    head = " | ".join(f"{k}: {v}" for k, v in headers)
    return f"{status} [{head}] {body[:300].decode('utf-8', 'replace')}"


# ---------------------------------------------------------------------------------------------
# The IdP's side.


class Idp:
    def __init__(self, opts):
        with open(opts.key, "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), password=None)
        with open(opts.cert, "rb") as f:
            pem = f.read().decode("ascii")
        self.cert_b64 = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
        self.sso = opts.sso
        self.issuer = opts.issuer
        self.tag = opts.tag
        self.served = 0
        self.sig_algs = set()

    def read_sp_metadata(self, xml_text):
        """The SP's entity id, default HTTP-POST ACS and signing key, from its metadata."""
        root = ET.fromstring(xml_text)
        sp = root.find("md:SPSSODescriptor", NS)
        if sp is None:
            raise SystemExit("saml_roundtrips.py: the SP metadata has no SPSSODescriptor")
        self.entity_id = root.get("entityID")
        acs = [a for a in sp.findall("md:AssertionConsumerService", NS) if a.get("Binding") == POST_BINDING]
        acs.sort(key=lambda a: (a.get("isDefault") != "true", int(a.get("index", "0"))))
        if not acs:
            raise SystemExit("saml_roundtrips.py: the SP metadata has no HTTP-POST AssertionConsumerService")
        self.acs = acs[0].get("Location")
        certs = [
            k.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
            for k in sp.findall("md:KeyDescriptor", NS)
            if k.get("use") in (None, "signing")
        ]
        certs = [c for c in certs if c is not None]
        if not certs:
            raise SystemExit("saml_roundtrips.py: the SP metadata has no signing certificate")
        der = base64.b64decode("".join(certs[0].text.split()))
        self.sp_key = x509.load_der_x509_certificate(der).public_key()
        self.opts = argparse.Namespace(issuer=self.issuer, acs=self.acs, audience=self.entity_id, tag=self.tag)

    def answer(self, sso_url):
        """Verifies the AuthnRequest of this HTTP-Redirect URL and answers it: (ACS, form body,
        request ID)."""
        query = urllib.parse.urlsplit(sso_url).query
        raw = {}
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if name in raw:
                raise Wrong(f"{name} twice in the redirect to the IdP")
            raw[name] = value
        for name in ("SAMLRequest", "SigAlg", "Signature"):
            if name not in raw:
                raise Wrong(f"the redirect to the IdP has no {name} (an unsigned AuthnRequest?): {sso_url[:300]}")
        # The signature covers the parameters as sent, in this order (SAML bindings, 3.4.4.1).
        signed = f"SAMLRequest={raw['SAMLRequest']}"
        if "RelayState" in raw:
            signed += f"&RelayState={raw['RelayState']}"
        signed += f"&SigAlg={raw['SigAlg']}"
        decoded = {k: urllib.parse.unquote_plus(v) for k, v in raw.items()}
        algorithm = SIG_ALGS.get(decoded["SigAlg"])
        if algorithm is None:
            raise Wrong(f"AuthnRequest signed with {decoded['SigAlg']}")
        self.sig_algs.add(decoded["SigAlg"].rsplit("#", 1)[-1])
        try:
            self.sp_key.verify(
                base64.b64decode(decoded["Signature"]), signed.encode("ascii"), padding.PKCS1v15(), algorithm()
            )
        except (InvalidSignature, ValueError) as e:
            raise Wrong(f"the AuthnRequest's signature does not verify with the SP metadata's key: {e!r}") from e
        request_xml = zlib.decompress(base64.b64decode(decoded["SAMLRequest"]), -15)
        request = ET.fromstring(request_xml)
        if request.tag != f"{{{saml_responses.NS_SAMLP}}}AuthnRequest":
            raise Wrong(f"not an AuthnRequest: {request.tag}")
        request_id = request.get("ID")
        issuer = request.findtext("saml:Issuer", namespaces=NS)
        if not request_id or issuer is None or issuer.strip() != self.entity_id:
            raise Wrong(f"AuthnRequest ID {request_id!r} from issuer {issuer!r}, not {self.entity_id}")
        if request.get("Destination") != self.sso:
            raise Wrong(f"AuthnRequest Destination {request.get('Destination')!r}, not {self.sso}")
        named_acs = request.get("AssertionConsumerServiceURL")
        if named_acs is not None and named_acs != self.acs:
            raise Wrong(f"AuthnRequest AssertionConsumerServiceURL {named_acs}, not the metadata's {self.acs}")
        self.served += 1
        xml = saml_responses.response_xml(self.served, self.opts, self.key, self.cert_b64, request_id)
        form = {"SAMLResponse": base64.b64encode(xml.encode("utf-8")).decode("ascii")}
        if "RelayState" in decoded:
            form["RelayState"] = decoded["RelayState"]
        return self.acs, urllib.parse.urlencode(form), request_id


# ---------------------------------------------------------------------------------------------
# The browsers.


class Run:
    def __init__(self, opts, idp, sources):
        self.opts, self.idp, self.sources = opts, idp, sources
        start = urllib.parse.urlsplit(opts.start)
        self.origin = f"{start.scheme}://{start.netloc}"
        self.host, self.port = start.hostname, start.port or 80
        self.left = opts.count
        self.started = self.checked = self.bad = self.hops = 0
        self.errors = {"connect": 0, "read": 0, "timeout": 0}
        self.first_bad = ""
        self.latencies = []
        self.t0 = self.t1 = None
        self.session = None
        self.first_answer = None

    def on_origin(self, location):
        """`location` (absolute or a path) as a path on the SP's origin, or None."""
        if location.startswith("/") and not location.startswith("//"):
            return location
        if location.startswith(self.origin + "/"):
            return location[len(self.origin) :]
        return None

    async def sign_in(self, conn):
        jar = {}

        def cookies():
            return [("Cookie", "; ".join(f"{k}={v}" for k, v in jar.items()))] if jar else []

        def keep(headers):
            for name, value in headers:
                if name.lower() == "set-cookie":
                    pair = value.split(";", 1)[0]
                    k, _, v = pair.partition("=")
                    jar[k.strip()] = v.strip()

        browser = [("Accept", "text/html"), ("User-Agent", "saml-bench")]
        path = self.on_origin(self.opts.start)
        for _ in range(MAX_HOPS):
            status, headers, body = await conn.request("GET", path, browser + cookies())
            self.hops += 1
            keep(headers)
            location = dict((k.lower(), v) for k, v in headers).get("location", "")
            if status not in (302, 303, 307) or not location:
                raise Wrong(f"GET {path}: {shown(status, headers, body)}")
            if location.startswith(self.idp.sso + "?"):
                break
            path = self.on_origin(location)
            if path is None:
                raise Wrong(f"redirected to {location}, neither the SP's origin nor the IdP")
        else:
            raise Wrong(f"no redirect to the IdP within {MAX_HOPS} hops (last: {location})")

        acs, form, request_id = self.idp.answer(location)
        if self.first_answer is None:
            self.first_answer = (form, request_id)
        acs_path = self.on_origin(acs)
        if acs_path is None:
            raise Wrong(f"the ACS {acs} is not on the SP's origin {self.origin}")
        status, headers, body = await conn.request(
            "POST",
            acs_path,
            browser + cookies() + [("Content-Type", "application/x-www-form-urlencoded")],
            form.encode("ascii"),
        )
        self.hops += 1
        keep(headers)
        fields = dict((k.lower(), v) for k, v in headers)
        back = fields.get("location", "")
        sets_session = any(
            k.lower() == "set-cookie" and v.startswith(self.opts.cookie + "=") and not v.startswith(self.opts.cookie + "=;")
            for k, v in headers
        )
        if status != 303 or back not in (self.opts.start, self.on_origin(self.opts.start)) or not sets_session:
            raise Wrong(f"POST {acs_path}: {shown(status, headers, body)}")
        self.session = f"{self.opts.cookie}={jar[self.opts.cookie]}"

    async def browser(self):
        conn = None
        while self.left > 0:
            self.left -= 1
            source = self.sources.take(conn.source if conn else None)
            if conn is None or conn.source != source:
                if conn is not None:
                    conn.close()
                conn = Connection(self.host, self.port, source)
            self.started += 1
            began = time.monotonic()
            if self.t0 is None:
                self.t0 = began
            try:
                await self.sign_in(conn)
                self.latencies.append(time.monotonic() - began)
            except Wrong as e:
                self.bad += 1
                self.first_bad = self.first_bad or str(e)
            except Broken as e:
                self.errors[e.kind] += 1
                self.first_bad = self.first_bad or str(e)
            self.checked += 1
            self.t1 = time.monotonic()
        if conn is not None:
            conn.close()

    async def run(self):
        await asyncio.gather(*(self.browser() for _ in range(min(self.opts.connections, self.opts.count))))


def fetch(url):
    """The body of url (a 200 only)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=TIMEOUT)
    conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"saml_roundtrips.py: GET {url} answered {response.status}")
    return body


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", required=True, help="the protected URL a browser asks for at the SP")
    p.add_argument("--sso", required=True, help="the IdP's SingleSignOnService URL (HTTP-Redirect)")
    p.add_argument("--sp-metadata", required=True, help="the SP's metadata URL")
    p.add_argument("--key", required=True, help="the IdP's RSA private key (PEM)")
    p.add_argument("--cert", required=True, help="the IdP's certificate (PEM)")
    p.add_argument("--issuer", required=True, help="the IdP's entityID")
    p.add_argument("--cookie", required=True, help="the SP's session cookie name")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--windows", default=None, help="source-address windows, kept across runs")
    p.add_argument("--per-address", type=int, default=250, help="sign-ins an address starts per window")
    p.add_argument("--tag", default="rt", help="NameIDs are TAG-1, TAG-2, ...")
    p.add_argument("--check", action="store_true", help="pysaml2 must accept the first Response")
    p.add_argument("--session-out", help="write the last sign-in's session cookie here")
    opts = p.parse_args()

    idp = Idp(opts)
    idp.read_sp_metadata(fetch(opts.sp_metadata))
    sources = Sources(opts.windows or "", opts.per_address)  # no file: windows start empty
    run = Run(opts, idp, sources)
    asyncio.run(run.run())
    if opts.windows:
        sources.save()

    lat = sorted(run.latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0
    elapsed = (run.t1 - run.t0) if run.t0 is not None and run.t1 is not None else 0
    e = run.errors
    print(
        f"BENCH requests={run.started} elapsed_us={int(elapsed * 1e6)} p99_us={int(p99 * 1e6)} "
        f"checked={run.checked} total={opts.count} bad={run.bad} connect={e['connect']} read={e['read']} "
        f"write=0 status=0 timeout={e['timeout']} hops={run.hops} sigalg={','.join(sorted(idp.sig_algs))}"
    )
    if run.first_bad:
        print("FIRST_BAD " + " ".join(run.first_bad.split()))
    if opts.check and run.first_answer:
        form, request_id = run.first_answer
        saml_responses.check_with_pysaml2(
            argparse.Namespace(cert=opts.cert, issuer=opts.issuer, acs=idp.acs, audience=idp.entity_id),
            form,
            request_id,
        )
        print(f"pysaml2 accepted the Response to {request_id}")
    if opts.session_out and run.session:
        with open(opts.session_out, "w", encoding="ascii") as f:
            f.write(run.session + "\n")


if __name__ == "__main__":
    sys.exit(main())
