"""Drives Portcullis's management API with ngrok's own Python client (PyPI `ngrok-api`).

Run by the integration test `ngrok_client::ngrok_python_client_builds_a_working_route`:
    python ngrok_api_flow.py BASE_URL API_KEY UPSTREAM_ADDR EDGE_ADDR

It creates a static backend, an HTTPS edge and a route with the client exactly as an ngrok user
would, fetches a page through the edge, exercises get/list/update/paging/errors, and prints one
JSON line with the ids it made. Any failure raises, so the process exits non-zero.
"""

import json
import sys

import ngrok
from ngrok.datatypes import EndpointBackendMutate
import requests


def main() -> None:
    base_url, api_key, upstream, edge_addr = sys.argv[1:5]
    client = ngrok.Client(api_key, base_url=base_url)
    hostport = "ngrok-client.test:80"

    backend = client.backends.static_address.create(address=upstream, description="made by ngrok-api")
    assert backend.address == upstream, backend
    assert backend.tls.enabled is False, backend

    edge = client.edges.https.create(hostports=[hostport], description="edge from python")
    assert edge.hostports == [hostport], edge
    assert edge.routes == [], edge

    route = client.edges.https_routes.create(
        edge_id=edge.id,
        match_type="path_prefix",
        match="/",
        backend=EndpointBackendMutate(client, {"enabled": True, "backend_id": backend.id}),
    )
    assert route.edge_id == edge.id and route.match == "/", route
    assert route.backend.backend.id == backend.id, route

    # A page through the edge reaches the upstream.
    page = requests.get(f"http://{edge_addr}/through-edge?from=python", headers={"Host": "ngrok-client.test"}, timeout=10)
    assert page.status_code == 200, (page.status_code, page.text)
    seen = page.json()
    assert seen["path"] == "/through-edge?from=python", seen

    # get, update and list, as ngrok users script them.
    fetched = client.edges.https.get(edge.id)
    assert [r.id for r in fetched.routes] == [route.id], fetched
    updated = client.edges.https_routes.update(edge_id=edge.id, id=route.id, description="updated")
    assert updated.description == "updated" and updated.match == "/", updated
    client.backends.static_address.update(id=backend.id, description="renamed")
    assert client.backends.static_address.get(backend.id).description == "renamed"
    assert client.backends.static_address.get(backend.id).address == upstream

    # Paging through the client's iterator follows next_page_uri.
    extra = [client.backends.static_address.create(address=f"127.0.0.1:{2000 + i}") for i in range(3)]
    listed = [b.id for b in client.backends.static_address.list(limit="2")]
    assert set(listed) >= {backend.id, *(b.id for b in extra)}, listed
    assert listed == sorted(listed, reverse=True), listed

    # Errors arrive as the client's own exception types.
    try:
        client.edges.https.get("edghts_doesnotexist")
        raise AssertionError("expected NotFoundError")
    except ngrok.NotFoundError as e:
        assert e.http_status_code == 404 and e.error_code == "ERR_PORTCULLIS_106", e
        assert e.operation_id.startswith("op_"), e.details
    try:
        client.edges.https_routes.create(edge_id=edge.id, match_type="regex", match="/x")
        raise AssertionError("expected Error")
    except ngrok.Error as e:
        assert e.http_status_code == 400 and e.error_code == "ERR_PORTCULLIS_105", e

    # API keys: the token is shown once.
    key = client.api_keys.create(description="from python")
    assert key.token and key.token.startswith("pcl_"), key
    assert client.api_keys.get(key.id).token is None
    client.api_keys.delete(key.id)

    for b in extra:
        client.backends.static_address.delete(b.id)
    print(json.dumps({"edge_id": edge.id, "route_id": route.id, "backend_id": backend.id}))


if __name__ == "__main__":
    main()
