"""openapi.yaml is the contract: it names exactly the routes gotrue.py serves, every error it
documents has one of the two error shapes, and the server serves the file itself."""

import os
import re

import yaml

import gotrue
from conftest import ROOT

DOC_PATH = os.path.join(ROOT, "openapi.yaml")
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# Routes that are deliberately not in the document, each with its reason.
UNDOCUMENTED = {
    # The catch-all under /admin/: it only exists to check admin credentials before answering
    # 404 for an unknown admin path (as upstream does); it is no endpoint of its own.
    ("GET", "/admin/{rest}"), ("POST", "/admin/{rest}"), ("PUT", "/admin/{rest}"), ("DELETE", "/admin/{rest}"),
}


def load_doc():
    with open(DOC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def openapi_path(rule):
    """Bottle's `/admin/users/<user_id>` (or `<name:filter>`) as OpenAPI's `/admin/users/{user_id}`;
    a trailing-slash alias (`/user/`) is the same path as `/user`."""
    path = re.sub(r"<([A-Za-z_][A-Za-z0-9_]*)(?::[^>]*)?>", r"{\1}", rule)
    return path.rstrip("/") or "/"


def served_operations():
    return {(route.method.upper(), openapi_path(route.rule)) for route in gotrue.app.routes} - UNDOCUMENTED


def documented_operations(doc):
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_path_mapping():
    assert openapi_path("/admin/users/<user_id>") == "/admin/users/{user_id}"
    assert openapi_path("/admin/users/<user_id>/") == "/admin/users/{user_id}"
    assert openapi_path("/admin/<rest:path>") == "/admin/{rest}"
    assert openapi_path("/user/") == "/user"
    assert openapi_path("/") == "/"


def test_every_served_route_is_documented():
    missing = served_operations() - documented_operations(load_doc())
    assert not missing, f"routes of gotrue.py missing from openapi.yaml: {sorted(missing)}"


def test_every_documented_route_is_served():
    extra = documented_operations(load_doc()) - served_operations()
    assert not extra, f"openapi.yaml documents routes gotrue.py does not serve: {sorted(extra)}"


def test_the_lead_routes_of_external_logins_are_documented():
    doc = load_doc()
    for op in [("GET", "/authorize"), ("GET", "/callback"), ("GET", "/openapi.yaml"), ("POST", "/token")]:
        assert op in documented_operations(doc)
    grants = doc["components"]["schemas"]["TokenRequest"]["properties"]["grant_type"]["enum"]
    assert set(grants) == {"password", "refresh_token", "authorization_code"}


def resolve(doc, node):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target = doc
        for part in ref[2:].split("/"):
            assert part in target, f"unresolvable $ref {ref}"
            target = target[part]
        node = target
    return node


def all_refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_refs(value)


def test_every_reference_resolves():
    doc = load_doc()
    for ref in all_refs(doc):
        resolve(doc, {"$ref": ref})


def error_shapes(doc, schema):
    """The error schemas a response schema is built from (through allOf/anyOf/oneOf)."""
    names = set()
    if "$ref" in schema:
        names.add(schema["$ref"].rsplit("/", 1)[1])
        schema = resolve(doc, schema)
    for key in ("allOf", "anyOf", "oneOf"):
        for part in schema.get(key, []):
            names |= error_shapes(doc, part)
    return names & {"HTTPError", "OAuthError"}


def test_every_error_response_is_json_in_one_of_the_two_shapes():
    doc = load_doc()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert "500" in op["responses"], f"{method} {path}: no 500"
            for status, response in op["responses"].items():
                if int(status) < 400:
                    continue
                response = resolve(doc, response)
                schema = response["content"]["application/json"]["schema"]
                assert error_shapes(doc, schema), f"{method} {path} {status}: not an error shape"


def test_protected_operations_document_401():
    doc = load_doc()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS and op.get("security"):
                assert "401" in op["responses"], f"{method} {path}"


def test_error_shapes():
    schemas = load_doc()["components"]["schemas"]
    assert schemas["HTTPError"]["required"] == ["code", "msg"]
    assert set(schemas["HTTPError"]["properties"]) == {"code", "msg", "error_id"}
    assert schemas["OAuthError"]["required"] == ["error"]
    assert set(schemas["OAuthError"]["properties"]) == {"error", "error_description"}


def test_the_server_serves_the_document(make_server):
    server = make_server("sqlite", smtp=False)
    r = server.get("/openapi.yaml")
    assert r.status_code == 200, r.text[:500]
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/yaml"
    with open(DOC_PATH, "rb") as f:
        assert r.content == f.read()
    assert yaml.safe_load(r.content)["openapi"].startswith("3.1")
