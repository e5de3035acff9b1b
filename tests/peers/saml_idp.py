"""A real SAML 2.0 Identity Provider for Portcullis's integration tests (PyPI `pysaml2` + `xmlsec1`).

Run with `tests/.venv/bin/python`:

    python3 saml_idp.py --workdir DIR [--port 0] [--sign both|assertion|response]
                        [--signing sha256|pysaml2-default]

It listens on 127.0.0.1 only (port 0 picks a free one), makes its own RSA-2048 key and self-signed
certificate in DIR (idp.key, idp.crt), then prints exactly one JSON line on stdout:

    {"base_url": "http://127.0.0.1:PORT", "metadata_url": "http://127.0.0.1:PORT/metadata", "pid": PID}

Logs go to stderr; SIGTERM (or SIGINT) stops it cleanly. Its entityID is the metadata URL.

A test fetches the IdP's metadata, registers the gateway's SP metadata with `POST /sp`, and then
drives logins and logouts through the gateway (over HTTP, or with a headless browser that fills in
the login form). What the IdP saw is readable as JSON for the test's assertions.

Endpoints:
  GET  /metadata              the EntityDescriptor pysaml2 generates for this IdP (IDPSSODescriptor,
                              signing key, SSO + SLO Redirect).
  POST /sp                    body = SP metadata XML; registers (or replaces, by entityID) an SP. 204.
  GET  /sso/redirect          AuthnRequest, HTTP-Redirect binding. Verifies the Redirect-binding
                              signature against the SP's metadata (recorded, not enforced) and
                              answers an HTML login form (#username, #password, #signin, #cancel).
  POST /login                 username/password/key[/cancel]. alice/alice-password, bob/bob-password.
                              Wrong password: 401 and the form again. Success: an auto-submitting
                              HTML form POSTing a signed SAMLResponse (+ RelayState) to the ACS.
  GET  /idp-initiated         ?user=alice[&sp=ENTITY_ID][&relay_state=..][&name_id_format=..]:
                              an unsolicited signed Response, same auto-submitting form.
  GET  /slo/redirect          ?SAMLRequest=.. (SP-initiated logout): verified, recorded, answered
                              with 303 to the SP's SLO with a signed LogoutResponse (Success).
                              ?SAMLResponse=.. (answer to /initiate-logout): recorded, 200.
  GET  /initiate-logout       ?user=alice[&sp=ENTITY_ID][&relay_state=..][&session_index=none]:
                              303 to the SP's SLO with a signed LogoutRequest for the user's last
                              NameID and SessionIndex (none: no SessionIndex, i.e. every session).
  GET  /last-request          JSON of the latest AuthnRequest.
  GET  /last-logout-request   JSON of the latest LogoutRequest from an SP.
  GET  /last-logout-response  JSON of the latest LogoutResponse from an SP.

The IdP runs at pysaml2's defaults except where a setting says otherwise:
  - its metadata is what pysaml2 generates for its configuration (`saml2.metadata.entity_descriptor`:
    algorithm-support extensions listing MD5 and SHA-1 among the rest, a signing KeyDescriptor,
    no NameIDFormat);
  - attributes go out as pysaml2 names them by default: OID names with the `uri` NameFormat and a
    FriendlyName (`mail` -> urn:oid:0.9.2342.19200300.100.1.3, `displayName` ->
    urn:oid:2.16.840.1.113730.3.1.241, `isMemberOf` -> urn:oid:1.3.6.1.4.1.5923.1.5.1.1);
  - DIFFERENT FROM pysaml2's DEFAULTS, deliberately, one setting each:
    * `sign_assertion` / `sign_response` (per --sign): pysaml2 signs nothing by default, and a
      Service Provider must refuse unsigned assertions;
    * `signing_algorithm` / `digest_algorithm` RSA-SHA256 / SHA-256: pysaml2 signs with RSA-SHA1 and
      SHA-1 by default, while the IdPs people use (Okta, Entra ID, Google, Keycloak, AD FS) sign
      with SHA-256. `--signing pysaml2-default` keeps pysaml2's SHA-1, for the test that the
      gateway refuses it unless told to allow it.
Redirect-binding query signatures (saml-bindings 3.4.4.1) use the same algorithm.

Sign-in outcomes besides success, as real IdPs send them (unsigned error Responses, pysaml2's
`create_error_response`): the form's Cancel button answers RequestDenied; the account `mallory`
(password mallory-password) is disabled and answers AuthnFailed; an AuthnRequest asking for a
NameID format this IdP does not issue answers InvalidNameIDPolicy.
"""

import argparse
import base64
import datetime
import html
import json
import logging
import os
import secrets
import signal
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlparse

warnings.filterwarnings("ignore", module=r"saml2\..*")  # pysaml2 trips cryptography's deprecations

from cryptography import x509  # noqa: E402  (a dependency of pysaml2)
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, samlp, xmldsig  # noqa: E402
from saml2.config import IdPConfig  # noqa: E402
from saml2.mdstore import InMemoryMetaData, MetadataStore  # noqa: E402
from saml2.metadata import create_metadata_string  # noqa: E402
from saml2.s_utils import decode_base64_and_inflate, deflate_and_base64_encode  # noqa: E402
from saml2.saml import (  # noqa: E402
    NAMEID_FORMAT_EMAILADDRESS,
    NAMEID_FORMAT_PERSISTENT,
    NAMEID_FORMAT_TRANSIENT,
    NAMEID_FORMAT_UNSPECIFIED,
    NameID,
)
from saml2.server import Server  # noqa: E402

log = logging.getLogger("saml_idp")

# --signing: (signature algorithm, digest algorithm) the IdP signs with.
SIGNING = {
    "sha256": (xmldsig.SIG_RSA_SHA256, xmldsig.DIGEST_SHA256),
    "pysaml2-default": (xmldsig.sig_default, xmldsig.digest_default),
}
# The NameID formats this IdP issues (an AuthnRequest asking for another gets InvalidNameIDPolicy).
NAME_ID_FORMATS = [
    NAMEID_FORMAT_PERSISTENT,
    NAMEID_FORMAT_EMAILADDRESS,
    NAMEID_FORMAT_TRANSIENT,
    NAMEID_FORMAT_UNSPECIFIED,
]
PASSWORD_CLASS = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"

USERS = {
    "alice": {
        "password": "alice-password",
        "persistent": "alice-pid",
        "email": "alice@example.com",
        "name": "Alice Liddell",
        "groups": ["engineering", "admins"],
    },
    "bob": {
        "password": "bob-password",
        "persistent": "bob-pid",
        "email": "bob@example.com",
        "name": "Bob Builder",
        "groups": ["sales"],
    },
    # A disabled account: the right password gets AuthnFailed.
    "mallory": {
        "password": "mallory-password",
        "persistent": "mallory-pid",
        "email": "mallory@example.com",
        "name": "Mallory",
        "groups": [],
        "disabled": True,
    },
}

# Redirect-binding signature algorithms this IdP can check: SigAlg URI -> (key kind, hash).
REDIRECT_SIG_ALGS = {
    xmldsig.SIG_RSA_SHA1: ("rsa", hashes.SHA1),
    xmldsig.SIG_RSA_SHA224: ("rsa", hashes.SHA224),
    xmldsig.SIG_RSA_SHA256: ("rsa", hashes.SHA256),
    xmldsig.SIG_RSA_SHA384: ("rsa", hashes.SHA384),
    xmldsig.SIG_RSA_SHA512: ("rsa", hashes.SHA512),
    xmldsig.SIG_ECDSA_SHA1: ("ec", hashes.SHA1),
    xmldsig.SIG_ECDSA_SHA224: ("ec", hashes.SHA224),
    xmldsig.SIG_ECDSA_SHA256: ("ec", hashes.SHA256),
    xmldsig.SIG_ECDSA_SHA384: ("ec", hashes.SHA384),
    xmldsig.SIG_ECDSA_SHA512: ("ec", hashes.SHA512),
}


class BadRequest(Exception):
    """Answered as 400 with the message as text."""


# --------------------------------------------------------------------------------------------
# Keys and metadata


def make_key_and_cert(workdir):
    """Writes a fresh RSA-2048 key and a self-signed certificate; returns (key, paths...)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Portcullis test SAML IdP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(workdir, "idp.key")
    cert_path = os.path.join(workdir, "idp.crt")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key_path, 0o600)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, key_path, cert_path


# --------------------------------------------------------------------------------------------
# Redirect binding (saml-bindings 3.4.4.1): raw query handling, signing, verification


def raw_query_pairs(query):
    """The query's parameters as {name: (raw value, decoded value)}; a repeated name is an error."""
    out = {}
    for part in query.split("&") if query else []:
        if not part:
            continue
        name, _, raw = part.partition("=")
        name = unquote_plus(name)
        if name in out:
            raise BadRequest(f"parameter {name} given twice")
        out[name] = (raw, unquote_plus(raw))
    return out


def verify_redirect_signature(params, msg_name, cert_b64s):
    """(valid, sig_alg): checks Signature over the raw `msg=..&RelayState=..&SigAlg=..` octets."""
    if "SigAlg" not in params or "Signature" not in params:
        return False, params.get("SigAlg", (None, None))[1]
    sig_alg = params["SigAlg"][1]
    signed = f"{msg_name}={params[msg_name][0]}"
    if "RelayState" in params:
        signed += f"&RelayState={params['RelayState'][0]}"
    signed += f"&SigAlg={params['SigAlg'][0]}"
    alg = REDIRECT_SIG_ALGS.get(sig_alg)
    if alg is None:
        log.info("unsupported SigAlg %s", sig_alg)
        return False, sig_alg
    kind, hash_cls = alg
    try:
        signature = base64.b64decode(params["Signature"][1], validate=True)
    except ValueError:
        return False, sig_alg
    for cert_b64 in cert_b64s:
        try:
            public_key = x509.load_der_x509_certificate(base64.b64decode(cert_b64)).public_key()
            if kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
                public_key.verify(signature, signed.encode("ascii"), padding.PKCS1v15(), hash_cls())
                return True, sig_alg
            if kind == "ec" and isinstance(public_key, ec.EllipticCurvePublicKey):
                # XML DSig ECDSA values are r||s; cryptography wants DER.
                half = len(signature) // 2
                der = encode_dss_signature(
                    int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
                )
                public_key.verify(der, signed.encode("ascii"), ec.ECDSA(hash_cls()))
                return True, sig_alg
        except (InvalidSignature, ValueError):
            continue
    return False, sig_alg


def signed_redirect_url(location, msg_name, xml, relay_state, private_key, sig_alg):
    """A Redirect-binding URL carrying `xml`, signed with `sig_alg` (RSA) over the encoded query."""
    query = urlencode({msg_name: deflate_and_base64_encode(xml).decode("ascii")})
    if relay_state is not None:
        query += "&" + urlencode({"RelayState": relay_state})
    query += "&" + urlencode({"SigAlg": sig_alg})
    _kind, hash_cls = REDIRECT_SIG_ALGS[sig_alg]
    signature = private_key.sign(query.encode("ascii"), padding.PKCS1v15(), hash_cls())
    query += "&" + urlencode({"Signature": base64.b64encode(signature).decode("ascii")})
    return location + ("&" if urlparse(location).query else "?") + query


# --------------------------------------------------------------------------------------------
# HTML


def page(title, body):
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def login_page(key, message=None):
    e = html.escape
    msg = f'<p id="error" role="alert">{e(message)}</p>\n' if message else ""
    return page(
        "Sign in - test IdP",
        "<h1>Sign in to the test IdP</h1>\n"
        f"{msg}"
        '<form method="post" action="/login">\n'
        '  <label for="username">Username</label>\n'
        '  <input id="username" name="username" autocomplete="username">\n'
        '  <label for="password">Password</label>\n'
        '  <input id="password" name="password" type="password" autocomplete="current-password">\n'
        f'  <input type="hidden" name="key" value="{e(key, quote=True)}">\n'
        '  <button type="submit" id="signin">Sign in</button>\n'
        '  <button type="submit" id="cancel" name="cancel" value="1">Cancel</button>\n'
        "</form>",
    )


def post_form_page(acs_url, saml_response_b64, relay_state):
    e = html.escape
    relay = (
        f'  <input type="hidden" name="RelayState" value="{e(relay_state, quote=True)}">\n'
        if relay_state is not None
        else ""
    )
    return page(
        "Signing you in",
        f'<form id="saml-post" method="post" action="{e(acs_url, quote=True)}">\n'
        f'  <input type="hidden" name="SAMLResponse" value="{e(saml_response_b64, quote=True)}">\n'
        f"{relay}"
        '  <noscript><p>JavaScript is off: press Continue.</p></noscript>\n'
        '  <button type="submit" id="continue">Continue</button>\n'
        "</form>\n"
        "<script>document.getElementById('saml-post').submit();</script>",
    )


# --------------------------------------------------------------------------------------------
# The IdP


class SP:
    """A registered Service Provider, read from its metadata by pysaml2."""

    def __init__(self, entity_id, md):
        self.entity_id = entity_id
        self.md = md
        self.descriptors = md[entity_id].get("spsso_descriptor") or []

    def _services(self, name, binding):
        return [s for d in self.descriptors for s in d.get(name, []) if s.get("binding") == binding]

    def acs_urls(self):
        return [s["location"] for s in self._services("assertion_consumer_service", BINDING_HTTP_POST)]

    def acs_for(self, url=None, index=None):
        """The HTTP-POST ACS: the requested one (which must be in the metadata) or the default."""
        services = self._services("assertion_consumer_service", BINDING_HTTP_POST)
        if not services:
            raise BadRequest(f"SP {self.entity_id} has no HTTP-POST AssertionConsumerService")
        if url:
            if url not in self.acs_urls():
                raise BadRequest(f"AssertionConsumerServiceURL {url} is not in the SP's metadata")
            return url
        if index is not None:
            for s in services:
                if str(s.get("index")) == str(index):
                    return s["location"]
            raise BadRequest(f"no HTTP-POST AssertionConsumerService with index {index}")
        for s in services:
            if str(s.get("is_default", "")).lower() in ("true", "1"):
                return s["location"]
        return sorted(services, key=lambda s: int(s.get("index") or 0))[0]["location"]

    def _slo(self):
        services = self._services("single_logout_service", BINDING_HTTP_REDIRECT)
        if not services:
            raise BadRequest(f"SP {self.entity_id} has no HTTP-Redirect SingleLogoutService")
        return services[0]

    def slo_location(self):
        """Where LogoutRequests to the SP go."""
        return self._slo()["location"]

    def slo_response_location(self):
        """Where LogoutResponses to the SP go: ResponseLocation if given, else Location."""
        return self._slo().get("response_location") or self._slo()["location"]

    def signing_certs(self):
        return [cert for _name, cert in self.md.certs(self.entity_id, "spsso", "signing")]


class IdP:
    def __init__(self, base_url, key, key_path, cert_path, sign_mode, signing):
        self.base_url = base_url
        self.entity_id = f"{base_url}/metadata"
        self.private_key = key
        self.sig_alg, digest_alg = SIGNING[signing]
        self.lock = threading.Lock()
        self.sps = {}  # entityID -> SP
        self.pending = {}  # login form key -> pending AuthnRequest
        self.sessions = {}  # (user, sp entityID) -> {"name_id": NameID, "session_index": str}
        self.last_sp = {}  # user -> sp entityID of the last Response
        self.last_request = None
        self.last_logout_request = None
        self.last_logout_response = None
        self.logout_requests_sent = {}  # LogoutRequest ID -> (user, sp)

        config = IdPConfig()
        config.load(
            {
                "entityid": self.entity_id,
                "key_file": key_path,
                "cert_file": cert_path,
                "xmlsec_binary": "/usr/bin/xmlsec1",
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [(f"{base_url}/sso/redirect", BINDING_HTTP_REDIRECT)],
                            "single_logout_service": [(f"{base_url}/slo/redirect", BINDING_HTTP_REDIRECT)],
                        },
                        # The settings that differ from pysaml2's defaults (see the docstring).
                        "sign_assertion": sign_mode in ("both", "assertion"),
                        "sign_response": sign_mode in ("both", "response"),
                        "signing_algorithm": self.sig_alg,
                        "digest_algorithm": digest_alg,
                    }
                },
            }
        )
        self.server = Server(config=config)
        # SPs registered with POST /sp are added to this store.
        self.server.metadata = MetadataStore(config.attribute_converters, config)
        self.server.config.metadata = self.server.metadata
        self.metadata_xml = create_metadata_string(None, config=config, sign=False).decode("utf-8")

    # ---- SP registry

    def register_sp(self, xml):
        md = InMemoryMetaData(self.server.metadata.attrc, xml)
        try:
            md.load()
        except Exception as exc:
            raise BadRequest(f"unreadable SP metadata: {exc}")
        sps = [eid for eid, ent in md.items() if ent.get("spsso_descriptor")]
        if len(sps) != 1:
            raise BadRequest(f"expected one EntityDescriptor with an SPSSODescriptor, found {len(sps)}")
        entity_id = sps[0]
        sp = SP(entity_id, md)
        sp.acs_for()  # has an HTTP-POST ACS
        # pysaml2's own store (used to address LogoutResponses) is keyed by entityID too.
        self.server.metadata.metadata[f"sp:{entity_id}"] = md
        self.sps[entity_id] = sp
        log.info("registered SP %s (ACS %s)", entity_id, sp.acs_urls())

    def sp(self, entity_id):
        if entity_id is None:
            if len(self.sps) == 1:
                return next(iter(self.sps.values()))
            raise BadRequest(f"sp= is needed: {len(self.sps)} SPs are registered")
        if entity_id not in self.sps:
            raise BadRequest(f"unknown SP {entity_id}")
        return self.sps[entity_id]

    # ---- SSO

    def handle_sso_redirect(self, query):
        params = raw_query_pairs(query)
        if "SAMLRequest" not in params:
            raise BadRequest("SAMLRequest is missing")
        relay_state = params["RelayState"][1] if "RelayState" in params else None
        try:
            parsed = self.server.parse_authn_request(params["SAMLRequest"][1], BINDING_HTTP_REDIRECT)
        except Exception as exc:
            raise BadRequest(f"unparsable AuthnRequest: {exc}")
        if parsed is None or parsed.message is None:
            raise BadRequest("unparsable AuthnRequest")
        req = parsed.message
        issuer = req.issuer.text.strip() if req.issuer is not None and req.issuer.text else None
        if issuer not in self.sps:
            raise BadRequest(f"unknown SP {issuer}")
        sp = self.sps[issuer]
        valid, sig_alg = verify_redirect_signature(params, "SAMLRequest", sp.signing_certs())
        nid_format = req.name_id_policy.format if req.name_id_policy is not None else None
        self.last_request = {
            "id": req.id,
            "issuer": issuer,
            "force_authn": str(req.force_authn).lower() in ("true", "1"),
            "name_id_format": nid_format,
            "acs_url": req.assertion_consumer_service_url,
            "signature_valid": valid,
            "sig_alg": sig_alg,
            "relay_state": relay_state,
        }
        log.info("AuthnRequest %s", self.last_request)
        if req.protocol_binding and req.protocol_binding != BINDING_HTTP_POST:
            raise BadRequest(f"unsupported ProtocolBinding {req.protocol_binding}")
        acs = sp.acs_for(req.assertion_consumer_service_url, req.assertion_consumer_service_index)
        if nid_format and nid_format not in NAME_ID_FORMATS:
            return self.error_form(
                sp, acs, req.id, relay_state, samlp.STATUS_INVALID_NAMEID_POLICY, f"{nid_format} is not issued here"
            )
        key = secrets.token_urlsafe(24)
        self.pending[key] = {
            "id": req.id,
            "sp": issuer,
            "acs": acs,
            "relay_state": relay_state,
            "name_id_format": nid_format,
        }
        return login_page(key)

    def response_form(self, user, sp, acs, in_response_to, relay_state, requested_format):
        """Signs a Response for `user` and answers the auto-submitting POST form."""
        info = USERS[user]
        fmt = requested_format or NAMEID_FORMAT_PERSISTENT
        if fmt == NAMEID_FORMAT_PERSISTENT:
            name_id = NameID(
                format=fmt, text=info["persistent"], name_qualifier=self.entity_id, sp_name_qualifier=sp.entity_id
            )
        elif fmt == NAMEID_FORMAT_TRANSIENT:
            name_id = NameID(
                format=fmt,
                text="_" + secrets.token_hex(16),
                name_qualifier=self.entity_id,
                sp_name_qualifier=sp.entity_id,
            )
        elif fmt == NAMEID_FORMAT_EMAILADDRESS:
            name_id = NameID(format=fmt, text=info["email"])
        else:
            name_id = NameID(format=fmt, text=user)
        # Attribute names as pysaml2's default converters send them (OID names, FriendlyName).
        identity = {"mail": [info["email"]], "displayName": [info["name"]], "isMemberOf": list(info["groups"])}
        xml = self.server.create_authn_response(
            identity,
            in_response_to=in_response_to,
            destination=acs,
            sp_entity_id=sp.entity_id,
            name_id=name_id,
            authn={"class_ref": PASSWORD_CLASS},
        )
        xml = str(xml)
        # The SessionIndex pysaml2 made (random) is remembered for logout.
        parsed = samlp.response_from_string(xml)
        session_index = parsed.assertion[0].authn_statement[0].session_index
        self.sessions[(user, sp.entity_id)] = {"name_id": name_id, "session_index": session_index}
        self.last_sp[user] = sp.entity_id
        log.info("Response %s for %s to %s (InResponseTo %s)", parsed.id, user, acs, in_response_to)
        saml_response = base64.b64encode(xml.encode("utf-8")).decode("ascii")
        return post_form_page(acs, saml_response, relay_state)

    def error_form(self, sp, acs, in_response_to, relay_state, status, message):
        """An error Response (pysaml2's create_error_response, unsigned as pysaml2 leaves it)."""
        response = self.server.create_error_response(in_response_to, acs, (status, message), sign=False)
        log.info("error Response %s to %s (InResponseTo %s)", status, acs, in_response_to)
        saml_response = base64.b64encode(str(response).encode("utf-8")).decode("ascii")
        return post_form_page(acs, saml_response, relay_state)

    def handle_login(self, form):
        key = form.get("key", "")
        pending = self.pending.get(key)
        if pending is None:
            raise BadRequest("unknown or already used login request")
        sp = self.sp(pending["sp"])
        if form.get("cancel"):
            del self.pending[key]
            return 200, self.error_form(
                sp, pending["acs"], pending["id"], pending["relay_state"], samlp.STATUS_REQUEST_DENIED, "cancelled"
            )
        user = form.get("username", "")
        if user not in USERS or not secrets.compare_digest(
            form.get("password", "").encode(), USERS[user]["password"].encode()
        ):
            log.info("wrong password for %r", user)
            return 401, login_page(key, "Wrong username or password.")
        del self.pending[key]
        if USERS[user].get("disabled"):
            return 200, self.error_form(
                sp, pending["acs"], pending["id"], pending["relay_state"], samlp.STATUS_AUTHN_FAILED, "account disabled"
            )
        return 200, self.response_form(
            user, sp, pending["acs"], pending["id"], pending["relay_state"], pending["name_id_format"]
        )

    def handle_idp_initiated(self, args):
        user = args.get("user")
        if user not in USERS:
            raise BadRequest(f"unknown user {user}")
        sp = self.sp(args.get("sp"))
        return self.response_form(
            user, sp, sp.acs_for(), None, args.get("relay_state"), args.get("name_id_format")
        )

    # ---- SLO

    def handle_slo_redirect(self, query):
        params = raw_query_pairs(query)
        relay_state = params["RelayState"][1] if "RelayState" in params else None
        if "SAMLRequest" in params:
            try:
                xml = decode_base64_and_inflate(params["SAMLRequest"][1])
                req = samlp.logout_request_from_string(xml)
            except Exception as exc:
                raise BadRequest(f"unparsable LogoutRequest: {exc}")
            if req is None:
                raise BadRequest("not a LogoutRequest")
            issuer = req.issuer.text.strip() if req.issuer is not None and req.issuer.text else None
            if issuer not in self.sps:
                raise BadRequest(f"unknown SP {issuer}")
            sp = self.sps[issuer]
            valid, sig_alg = verify_redirect_signature(params, "SAMLRequest", sp.signing_certs())
            name_id = req.name_id.text if req.name_id is not None else None
            self.last_logout_request = {
                "id": req.id,
                "name_id": name_id,
                "name_id_format": req.name_id.format if req.name_id is not None else None,
                "session_indexes": [s.text for s in req.session_index],
                "signature_valid": valid,
                "sig_alg": sig_alg,
                "issuer": issuer,
                "relay_state": relay_state,
            }
            log.info("LogoutRequest %s", self.last_logout_request)
            for key, sess in list(self.sessions.items()):
                if key[1] == issuer and sess["name_id"].text == name_id:
                    del self.sessions[key]
            location = sp.slo_response_location()
            response = self.server.create_logout_response(req, [BINDING_HTTP_REDIRECT], sign=False)
            response.destination = location
            return 303, signed_redirect_url(
                location, "SAMLResponse", str(response), relay_state, self.private_key, self.sig_alg
            )
        if "SAMLResponse" in params:
            try:
                xml = decode_base64_and_inflate(params["SAMLResponse"][1])
                resp = samlp.logout_response_from_string(xml)
            except Exception as exc:
                raise BadRequest(f"unparsable LogoutResponse: {exc}")
            if resp is None:
                raise BadRequest("not a LogoutResponse")
            issuer = resp.issuer.text.strip() if resp.issuer is not None and resp.issuer.text else None
            certs = self.sps[issuer].signing_certs() if issuer in self.sps else []
            valid, sig_alg = verify_redirect_signature(params, "SAMLResponse", certs)
            status = None
            if resp.status is not None and resp.status.status_code is not None:
                status = resp.status.status_code.value
            self.last_logout_response = {
                "in_response_to": resp.in_response_to,
                "status": status,
                "signature_valid": valid,
                "sig_alg": sig_alg,
                "issuer": issuer,
                "relay_state": relay_state,
                "answers_our_request": resp.in_response_to in self.logout_requests_sent,
            }
            log.info("LogoutResponse %s", self.last_logout_response)
            return 200, "logged out at the IdP\n"
        raise BadRequest("SAMLRequest or SAMLResponse is missing")

    def handle_initiate_logout(self, args):
        user = args.get("user")
        if user not in USERS:
            raise BadRequest(f"unknown user {user}")
        sp_id = args.get("sp") or self.last_sp.get(user)
        sp = self.sp(sp_id)
        session = self.sessions.pop((user, sp.entity_id), None)
        if session is None:
            raise BadRequest(f"{user} has no session at {sp.entity_id}")
        location = sp.slo_location()
        req_id, req = self.server.create_logout_request(
            location,
            sp.entity_id,
            name_id=session["name_id"],
            session_indexes=None if args.get("session_index") == "none" else [session["session_index"]],
            sign=False,
        )
        self.logout_requests_sent[req_id] = (user, sp.entity_id)
        log.info("LogoutRequest %s for %s to %s", req_id, user, location)
        return signed_redirect_url(
            location, "SAMLRequest", str(req), args.get("relay_state"), self.private_key, self.sig_alg
        )


# --------------------------------------------------------------------------------------------
# HTTP


def make_handler(idp):
    class Handler(BaseHTTPRequestHandler):
        server_version = "saml-test-idp"

        def log_message(self, fmt, *args):
            line = fmt % args
            log.info("%s", line if len(line) < 200 else line[:160] + " ... " + line[-20:])

        def send(self, status, body, content_type="text/plain; charset=utf-8", headers=()):
            data = body.encode("utf-8") if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def send_html(self, status, body):
            self.send(status, body, "text/html; charset=utf-8")

        def send_json(self, value):
            self.send(200, json.dumps(value) + "\n", "application/json")

        def redirect(self, url):
            self.send(303, "", headers=[("Location", url)])

        def body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def dispatch(self, fn):
            try:
                with idp.lock:
                    fn()
            except BadRequest as exc:
                log.info("400: %s", exc)
                self.send(400, f"{exc}\n")
            except Exception as exc:  # a bug here must show, not hang the test
                log.exception("internal error")
                self.send(500, f"internal error: {exc}\n")

        def do_GET(self):
            url = urlparse(self.path)
            args = dict(parse_qsl(url.query, keep_blank_values=True))
            routes = {
                "/metadata": lambda: self.send(200, idp.metadata_xml, "application/samlmetadata+xml"),
                "/sso/redirect": lambda: self.send_html(200, idp.handle_sso_redirect(url.query)),
                "/idp-initiated": lambda: self.send_html(200, idp.handle_idp_initiated(args)),
                "/slo/redirect": lambda: self._slo(url.query),
                "/initiate-logout": lambda: self.redirect(idp.handle_initiate_logout(args)),
                "/last-request": lambda: self.send_json(idp.last_request),
                "/last-logout-request": lambda: self.send_json(idp.last_logout_request),
                "/last-logout-response": lambda: self.send_json(idp.last_logout_response),
                "/": lambda: self.send(200, "Portcullis test SAML IdP\n"),
            }
            route = routes.get(url.path)
            if route is None:
                self.send(404, "not found\n")
            else:
                self.dispatch(route)

        def _slo(self, query):
            status, out = idp.handle_slo_redirect(query)
            if status == 303:
                self.redirect(out)
            else:
                self.send(status, out)

        def do_POST(self):
            path = urlparse(self.path).path
            if path == "/sp":
                data = self.body()

                def register():
                    try:
                        xml = data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise BadRequest("SP metadata is not UTF-8")
                    idp.register_sp(xml)
                    self.send_response(204)
                    self.end_headers()

                self.dispatch(register)
            elif path == "/login":
                form = dict(parse_qsl(self.body().decode("utf-8", "replace"), keep_blank_values=True))

                def login():
                    status, body = idp.handle_login(form)
                    self.send_html(status, body)

                self.dispatch(login)
            else:
                self.send(404, "not found\n")

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="where the key and certificate are written")
    parser.add_argument("--port", type=int, default=0, help="127.0.0.1 port; 0 picks a free one")
    parser.add_argument(
        "--sign", choices=["both", "assertion", "response"], default="both", help="what the Response signs"
    )
    parser.add_argument(
        "--signing", choices=list(SIGNING), default="sha256", help="the signature and digest algorithms"
    )
    opts = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="saml_idp %(levelname)s %(message)s")
    logging.getLogger("saml2").setLevel(logging.WARNING)

    os.makedirs(opts.workdir, exist_ok=True)
    key, _cert, key_path, cert_path = make_key_and_cert(opts.workdir)

    httpd = ThreadingHTTPServer(("127.0.0.1", opts.port), None)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    base_url = f"http://127.0.0.1:{port}"
    idp = IdP(base_url, key, key_path, cert_path, opts.sign, opts.signing)
    httpd.RequestHandlerClass = make_handler(idp)

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(json.dumps({"base_url": base_url, "metadata_url": idp.entity_id, "pid": os.getpid()}), flush=True)
    log.info("listening on %s (entityID %s, signing %s with %s)", base_url, idp.entity_id, opts.sign, opts.signing)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    log.info("stopped")


if __name__ == "__main__":
    main()
