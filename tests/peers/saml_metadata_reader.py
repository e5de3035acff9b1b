"""Reads SAML metadata with pysaml2's metadata store, for tests to compare the gateway's reading with.

Run with `tests/.venv/bin/python`:

    python3 saml_metadata_reader.py FILE

Prints one JSON object on stdout: for each entity with an IDPSSODescriptor, by entityID,
{"sso_redirect": URL or null, "slo_redirect": URL or null, "signing_certificates_sha256": [hex, ...]}.
Signing certificates are those pysaml2 would check an IdP's signatures with (`use="signing"`, or no
`use`). pysaml2 does not check the metadata's own signature here (it has no key to check it with).
"""

import base64
import hashlib
import json
import sys
import warnings

warnings.filterwarnings("ignore", module=r"saml2\..*")

from saml2 import BINDING_HTTP_REDIRECT  # noqa: E402
from saml2.attribute_converter import ac_factory  # noqa: E402
from saml2.mdstore import MetaDataFile  # noqa: E402


def first_location(services):
    return services[0]["location"] if services else None


def main():
    md = MetaDataFile(ac_factory(), sys.argv[1])
    md.load()
    out = {}
    for entity_id, entity in md.items():
        descriptors = entity.get("idpsso_descriptor") or []
        if not descriptors:
            continue
        sso = [s for d in descriptors for s in d.get("single_sign_on_service", []) if s["binding"] == BINDING_HTTP_REDIRECT]
        slo = [s for d in descriptors for s in d.get("single_logout_service", []) if s["binding"] == BINDING_HTTP_REDIRECT]
        fingerprints = []
        for _name, cert in md.certs(entity_id, "idpsso", "signing"):
            digest = hashlib.sha256(base64.b64decode("".join(cert.split()))).hexdigest()
            if digest not in fingerprints:
                fingerprints.append(digest)
        out[entity_id] = {
            "sso_redirect": first_location(sso),
            "slo_redirect": first_location(slo),
            "signing_certificates_sha256": fingerprints,
        }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
