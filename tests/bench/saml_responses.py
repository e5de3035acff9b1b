"""Pre-signed SAML Responses for tests/bench/saml.sh (run with tests/.venv/bin/python); its
`response_xml` also answers each AuthnRequest of tests/bench/saml_roundtrips.py.

    saml_responses.py --key idp.key --cert idp.crt --issuer IDP_ENTITY_ID --acs ACS_URL \
        --audience SP_ENTITY_ID --count N --out FILE [--tag TAG] [--jobs 2] [--check]

Writes FILE with N lines, each an HTTP-POST binding form body for the ACS:
`SAMLResponse=<url-encoded base64>&RelayState=%2F`. Every Response is unsolicited (no
InResponseTo), fresh (IssueInstant = when it was made, valid for 5 minutes), addressed to the
ACS (Destination, Recipient) and the SP (AudienceRestriction), for its own user (persistent
NameID `TAG-i`, attributes email, name, groups), with its own Response and Assertion IDs.
Both the Assertion and the Response are signed, as tests/peers/saml_idp.py signs them with
pysaml2 and xmlsec1: enveloped XML signatures, RSA-SHA256, SHA-256 digests, exclusive c14n,
the signing certificate in KeyInfo.

pysaml2 signs through one xmlsec1 process per signature (30 ms each here), too slow to make
thousands of Responses within the two minutes an SP accepts them. So this script writes
each Response directly in its exclusive-c14n form (every element declares exactly the
namespaces it uses, attributes in canonical order, no empty-element tags, no whitespace between
elements): the document's text is then its own canonical form, and the digests and signatures
are plain SHA-256 and RSA over those bytes. `--check` proves the result with pysaml2 as a
service provider would (xmlsec1 verifies both signatures; pysaml2 checks Destination, Recipient,
audience, times): the first Response of the file must be accepted.

Prints one line: `made N responses in S s`.
"""

import argparse
import base64
import datetime
import hashlib
import multiprocessing
import os
import secrets
import sys
import time
import warnings
from urllib.parse import quote

warnings.filterwarnings("ignore", module=r"saml2\..*")  # pysaml2 trips cryptography's deprecations

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402

NS_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
PASSWORD_CLASS = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
BASIC = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
LIFETIME = datetime.timedelta(minutes=5)


def esc(text):
    """Escapes text and attribute values as canonical XML writes them (both in one: no value
    here holds a tab, newline or carriage return)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def instant(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def signature(reference_id, canonical_element, key, cert_b64):
    """The enveloped <ds:Signature> over `canonical_element` (its exclusive-c14n bytes without
    the signature), as it is inserted into the document."""
    digest = base64.b64encode(hashlib.sha256(canonical_element.encode("utf-8")).digest()).decode("ascii")
    signed_info_body = (
        f'<ds:CanonicalizationMethod Algorithm="{EXC_C14N}"></ds:CanonicalizationMethod>'
        f'<ds:SignatureMethod Algorithm="{RSA_SHA256}"></ds:SignatureMethod>'
        f'<ds:Reference URI="#{reference_id}"><ds:Transforms>'
        f'<ds:Transform Algorithm="{ENVELOPED}"></ds:Transform>'
        f'<ds:Transform Algorithm="{EXC_C14N}"></ds:Transform>'
        f'</ds:Transforms><ds:DigestMethod Algorithm="{SHA256}"></ds:DigestMethod>'
        f"<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference>"
    )
    # SignedInfo canonicalized on its own declares the ds namespace it uses.
    canonical_signed_info = f'<ds:SignedInfo xmlns:ds="{NS_DS}">{signed_info_body}</ds:SignedInfo>'
    value = key.sign(canonical_signed_info.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return (
        f'<ds:Signature xmlns:ds="{NS_DS}"><ds:SignedInfo>{signed_info_body}</ds:SignedInfo>'
        f"<ds:SignatureValue>{base64.b64encode(value).decode('ascii')}</ds:SignatureValue>"
        f"<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert_b64}</ds:X509Certificate>"
        "</ds:X509Data></ds:KeyInfo></ds:Signature>"
    )


def response_xml(i, opts, key, cert_b64, in_response_to=None):
    """Response number `i`: the signed document (which is also its own canonical form).
    Unsolicited, or the answer to the AuthnRequest whose ID is `in_response_to` (on the Response
    and its SubjectConfirmationData, as an IdP answers an SP-initiated sign-in)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    issued = instant(now)
    not_before = instant(now - datetime.timedelta(seconds=30))
    not_after = instant(now + LIFETIME)
    response_id = "_r" + secrets.token_hex(16)
    assertion_id = "_a" + secrets.token_hex(16)
    user = f"{opts.tag}-{i}"
    # Canonical attribute order (by name): InResponseTo sorts before IssueInstant and NotOnOrAfter.
    answers = f' InResponseTo="{esc(in_response_to)}"' if in_response_to else ""
    issuer = f"<saml:Issuer>{esc(opts.issuer)}</saml:Issuer>"
    attributes = "".join(
        f'<saml:Attribute Name="{name}" NameFormat="{BASIC}">'
        + "".join(f"<saml:AttributeValue>{esc(v)}</saml:AttributeValue>" for v in values)
        + "</saml:Attribute>"
        for name, values in (
            ("email", [f"{user}@example.com"]),
            ("name", [f"Bench User {user}"]),
            ("groups", ["engineering", "bench"]),
        )
    )
    assertion_body = (
        "<saml:Subject>"
        f'<saml:NameID Format="{PERSISTENT}" NameQualifier="{esc(opts.issuer)}"'
        f' SPNameQualifier="{esc(opts.audience)}">{esc(user)}</saml:NameID>'
        f'<saml:SubjectConfirmation Method="{BEARER}">'
        f'<saml:SubjectConfirmationData{answers} NotOnOrAfter="{not_after}" Recipient="{esc(opts.acs)}">'
        "</saml:SubjectConfirmationData></saml:SubjectConfirmation></saml:Subject>"
        f'<saml:Conditions NotBefore="{not_before}" NotOnOrAfter="{not_after}">'
        f"<saml:AudienceRestriction><saml:Audience>{esc(opts.audience)}</saml:Audience>"
        "</saml:AudienceRestriction></saml:Conditions>"
        f'<saml:AuthnStatement AuthnInstant="{issued}" SessionIndex="_s{secrets.token_hex(16)}">'
        f"<saml:AuthnContext><saml:AuthnContextClassRef>{PASSWORD_CLASS}</saml:AuthnContextClassRef>"
        "</saml:AuthnContext></saml:AuthnStatement>"
        f"<saml:AttributeStatement>{attributes}</saml:AttributeStatement>"
    )
    # Canonical attribute order: namespace declarations, then unqualified attributes by name.
    assertion_open = f'<saml:Assertion xmlns:saml="{NS_SAML}" ID="{assertion_id}" IssueInstant="{issued}" Version="2.0">'
    canonical_assertion = f"{assertion_open}{issuer}{assertion_body}</saml:Assertion>"
    assertion = (
        f"{assertion_open}{issuer}{signature(assertion_id, canonical_assertion, key, cert_b64)}"
        f"{assertion_body}</saml:Assertion>"
    )
    # In the Response, saml:Issuer and saml:Assertion are siblings: each declares saml itself.
    response_open = (
        f'<samlp:Response xmlns:samlp="{NS_SAMLP}" Destination="{esc(opts.acs)}" ID="{response_id}"{answers}'
        f' IssueInstant="{issued}" Version="2.0">'
    )
    response_issuer = f'<saml:Issuer xmlns:saml="{NS_SAML}">{esc(opts.issuer)}</saml:Issuer>'
    status = f'<samlp:Status><samlp:StatusCode Value="{SUCCESS}"></samlp:StatusCode></samlp:Status>'
    response_rest = f"{status}{assertion}</samlp:Response>"
    canonical_response = f"{response_open}{response_issuer}{response_rest}"
    return f"{response_open}{response_issuer}{signature(response_id, canonical_response, key, cert_b64)}{response_rest}"


_WORKER = {}


def _init_worker(opts):
    with open(opts.key, "rb") as f:
        _WORKER["key"] = serialization.load_pem_private_key(f.read(), password=None)
    with open(opts.cert, "rb") as f:
        pem = f.read().decode("ascii")
    _WORKER["cert_b64"] = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    _WORKER["opts"] = opts


def _form_bodies(indexes):
    out = []
    for i in indexes:
        xml = response_xml(i, _WORKER["opts"], _WORKER["key"], _WORKER["cert_b64"])
        b64 = base64.b64encode(xml.encode("utf-8")).decode("ascii")
        out.append(f"SAMLResponse={quote(b64, safe='')}&RelayState=%2F")
    return out


def check_with_pysaml2(opts, body, in_response_to=None):
    """pysaml2, as the SP of this ACS and audience with the IdP's metadata, must accept `body`
    (a form body), unsolicited or as the answer to its request `in_response_to`."""
    from urllib.parse import parse_qs

    from saml2 import BINDING_HTTP_POST
    from saml2.client import Saml2Client
    from saml2.config import SPConfig

    with open(opts.cert, "rb") as f:
        pem = f.read().decode("ascii")
    cert_b64 = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    idp_metadata = (
        f'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{esc(opts.issuer)}">'
        f'<md:IDPSSODescriptor protocolSupportEnumeration="{NS_SAMLP}">'
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="{NS_DS}"><ds:X509Data>'
        f"<ds:X509Certificate>{cert_b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        '<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"'
        f' Location="{esc(opts.issuer)}/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>'
    )
    config = SPConfig()
    config.load(
        {
            "entityid": opts.audience,
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "metadata": {"inline": [idp_metadata]},
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(opts.acs, BINDING_HTTP_POST)]},
                    "allow_unsolicited": in_response_to is None,
                    "want_response_signed": True,
                    "want_assertions_signed": True,
                }
            },
        }
    )
    client = Saml2Client(config)
    saml_response = parse_qs(body)["SAMLResponse"][0]
    outstanding = {in_response_to: "/"} if in_response_to else None
    parsed = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding=outstanding)
    if parsed is None or parsed.assertion is None:
        raise SystemExit("saml_responses.py: pysaml2 did not accept the first Response")
    return parsed.name_id.text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True, help="the IdP's RSA private key (PEM)")
    parser.add_argument("--cert", required=True, help="the IdP's certificate (PEM)")
    parser.add_argument("--issuer", required=True, help="the IdP's entityID")
    parser.add_argument("--acs", required=True, help="the SP's Assertion Consumer Service URL")
    parser.add_argument("--audience", required=True, help="the SP's entityID")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tag", default="user", help="NameIDs are TAG-0, TAG-1, ...")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="signing processes")
    parser.add_argument("--check", action="store_true", help="verify the first Response with pysaml2")
    opts = parser.parse_args()

    started = time.monotonic()
    chunks = [range(i, min(i + 200, opts.count)) for i in range(0, opts.count, 200)]
    if opts.jobs > 1 and opts.count > 200:
        with multiprocessing.Pool(opts.jobs, _init_worker, (opts,)) as pool:
            bodies = [b for chunk in pool.map(_form_bodies, chunks) for b in chunk]
    else:
        _init_worker(opts)
        bodies = [b for chunk in chunks for b in _form_bodies(chunk)]
    with open(opts.out, "w", encoding="ascii") as f:
        f.write("\n".join(bodies) + "\n")
    if opts.check and bodies:
        check_with_pysaml2(opts, bodies[0])
    print(f"made {len(bodies)} responses in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
