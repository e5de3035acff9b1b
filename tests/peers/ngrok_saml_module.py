"""Drives a route's SAML module with ngrok's own Python client (PyPI `ngrok-api`).

Run by the integration test `ngrok_client::ngrok_python_client_manages_a_saml_module`:
    python ngrok_saml_module.py BASE_URL API_KEY EDGE_ID ROUTE_ID IDP_METADATA_FILE

It sets the module with `edge_modules.https_edge_route_saml.replace` (the bare module body the
client sends), reads it back, changes it through a route update's `saml` field, checks the
client's error for a bad module, deletes it, and prints one JSON line with what it saw. Any
failure raises, so the process exits non-zero.
"""

import json
import sys

import ngrok
from ngrok.datatypes import EndpointSAMLMutate


def main() -> None:
    base_url, api_key, edge_id, route_id, metadata_file = sys.argv[1:6]
    client = ngrok.Client(api_key, base_url=base_url)
    saml = client.edge_modules.https_edge_route_saml
    with open(metadata_file, encoding="utf-8") as f:
        metadata = f.read()

    module = saml.replace(
        edge_id=edge_id,
        id=route_id,
        module=EndpointSAMLMutate(client, {"idp_metadata": metadata, "authorized_groups": ["engineering"], "force_authn": True}),
    )
    assert module.force_authn is True and module.authorized_groups == ["engineering"], module
    assert module.enabled is True, module
    assert module.entity_id and module.entity_id == module.metadata_url, module
    assert module.assertion_consumer_service_url.endswith("/acs"), module
    assert module.request_signing_certificate_pem.startswith("-----BEGIN CERTIFICATE-----"), module

    fetched = saml.get(edge_id=edge_id, id=route_id)
    assert fetched.entity_id == module.entity_id, fetched

    route = client.edges.https_routes.update(
        edge_id=edge_id,
        id=route_id,
        saml=EndpointSAMLMutate(client, {"idp_metadata": metadata, "allow_idp_initiated": True}),
    )
    assert route.saml.allow_idp_initiated is True and route.saml.force_authn is False, route
    assert route.saml.request_signing_certificate_pem == module.request_signing_certificate_pem, route

    try:
        saml.replace(
            edge_id=edge_id,
            id=route_id,
            module=EndpointSAMLMutate(client, {"idp_metadata": metadata, "nameid_format": "urn:example:nope"}),
        )
        raise AssertionError("a bad nameid_format was accepted")
    except ngrok.Error as e:
        bad_format = {"error_code": e.error_code, "http_status_code": e.http_status_code, "message": str(e)}

    saml.delete(edge_id=edge_id, id=route_id)
    after = client.edges.https_routes.get(edge_id=edge_id, id=route_id)
    print(json.dumps({
        "entity_id": module.entity_id,
        "acs": module.assertion_consumer_service_url,
        "bad_format": bad_format,
        "saml_after_delete": after.saml is not None,
    }))


if __name__ == "__main__":
    main()
