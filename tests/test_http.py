"""The HTTP surface: /health, /settings, CORS (preflight and on errors), router errors, body
limits and failures that must never reach the client as a traceback."""

import socket

import jwt
import pytest
import requests


def test_health(server):
    r = server.get("/health")
    assert r.status_code == 200
    assert list(r.json()) == ["description", "name", "version"] and r.json()["name"] == "GoTrue"


def test_settings(make_server, engine):
    # a provider counts as enabled once it is usable: enabled, with client id, secret and redirect URI
    complete = {f"GOTRUE_EXTERNAL_GITHUB_{k}": "x" for k in ("CLIENT_ID", "SECRET", "REDIRECT_URI")}
    server = make_server(engine, GOTRUE_EXTERNAL_GITHUB_ENABLED="true", GOTRUE_EXTERNAL_GITLAB_ENABLED="true",
                         GOTRUE_EXTERNAL_SAML_NAME="TestSamlName", **complete)
    assert server.get("/settings").json() == {
        "external": {"bitbucket": False, "github": True, "gitlab": False, "google": False, "facebook": False,
                     "email": True, "saml": False},
        "external_labels": {"saml": "TestSamlName"}, "disable_signup": False, "autoconfirm": False}


def test_preflight_allows_what_the_widget_sends(server):
    r = server.request("OPTIONS", "/settings", headers={
        "Origin": "https://site.example.com", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "X-Nf-Client, Content-Type, Authorization, X-Use-Cookie"})
    assert r.status_code == 204 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Methods"] == "GET"
    assert r.headers["Access-Control-Allow-Headers"] == "X-Nf-Client, Content-Type, Authorization, X-Use-Cookie"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("method, headers", [("PATCH", ""), ("GET", "X-Evil"), ("DELETE", "X-Nf-Client, X-Other")])
def test_preflight_refuses_other_methods_and_headers(server, method, headers):
    r = server.request("OPTIONS", "/user", headers={
        "Origin": "https://x.example", "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})
    assert r.status_code == 204 and "Access-Control-Allow-Origin" not in r.headers
    assert r.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def test_cors_headers_on_success_and_on_errors(server):
    for r in (server.get("/settings", headers={"Origin": "https://x.example"}),
              server.get("/user", headers={"Origin": "https://x.example"}),
              server.post("/nowhere", headers={"Origin": "https://x.example"})):
        assert r.headers["Access-Control-Allow-Origin"] == "*" and "Origin" in r.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in server.get("/settings").headers


def test_router_errors(server):
    r = server.get("/nowhere")
    # JSON in upstream's error shape (upstream's router answers text here)
    assert (r.status_code, r.json()) == (404, {"code": 404, "msg": "Not Found"})
    r = server.delete("/signup")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert server.get("/").status_code == 404


def test_bodies_over_one_mebibyte_are_refused(server):
    big = b'{"email":"a@b.c","password":"' + b"x" * (1 << 20) + b'"}'
    r = server.post("/signup", data=big)
    assert (r.status_code, r.json()["code"]) == (413, 413)


def test_go_style_escaping_of_html_characters(server):
    r = server.get("/admin/audit", params={"query": "<&>"}, token=server.admin_token())
    assert r.status_code == 400 and "\\u003c\\u0026\\u003e" in r.text


def test_a_dropped_database_gives_500_json_without_traceback(make_server, engine):
    server = make_server(engine)
    server.sql("DROP TABLE {users}")
    r = server.get("/user", token=jwt.encode({"sub": "11111111-1111-4111-8111-111111111111"},
                                             server.env["GOTRUE_JWT_SECRET"], algorithm="HS256"))
    assert r.status_code == 500
    body = r.json()
    assert body["msg"] == "Internal server error" and body["code"] == 500 and body["error_id"]
    assert "Traceback" not in r.text


def test_request_id_header_is_used_as_error_id(make_server, engine):
    server = make_server(engine, REQUEST_ID_HEADER="X-Request-ID")
    server.sql("DROP TABLE {refresh_tokens}")
    r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"},
                    headers={"X-Request-ID": "req-123"})
    assert r.status_code == 500 and r.json()["error_id"] == "req-123"
    assert "req-123" in server.log()


def test_errors_are_in_the_log_before_the_answer_and_info_lines_follow_in_order(make_server, engine):
    """Info lines are queued and written a moment later, in order; an error is written at
    once (before its answer leaves), after what was queued before it. One process: the order
    is each process's own."""
    server = make_server(engine, REQUEST_ID_HEADER="X-Request-ID", GOTRUE_API_WORKERS="1")
    for n in range(5):
        assert server.get("/settings", headers={"X-Request-ID": f"ok-{n}"}).status_code == 200
    server.sql("DROP TABLE {refresh_tokens}")
    r = server.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"},
                    headers={"X-Request-ID": "broken-1"})
    assert r.status_code == 500
    written = server.read_log()  # no marker: what is in the file as the answer arrives
    error = [line for line in written.splitlines() if "level=ERROR" in line and "broken-1" in line]
    assert error, written
    before_error = written[:written.index(error[0])]
    assert all(f"request_id=ok-{n} " in before_error for n in range(5)), written  # queued lines first
    log = server.log()  # after a marker: the request line of the failed request too
    order = [log.index(f"request_id=ok-{n} ") for n in range(5)] + [log.index("request_id=broken-1 ")]
    assert order == sorted(order), log


def test_garbage_on_the_socket_does_not_kill_the_server(server):
    with socket.create_connection(("127.0.0.1", int(server.env["PORT"]))) as s:
        s.sendall(b"\x00\x01 NOT HTTP\r\n\r\n")
        s.recv(1024)
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
