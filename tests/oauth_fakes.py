"""Loopback fake OAuth2 providers for the external-login tests (test_external.py).

One class per provider *shape* gotrue.py knows: GitHub, GitLab, Google, Bitbucket, Facebook and a
generic OpenID Connect provider (discovery document, Keycloak-like paths under a realm). Each is a
real threaded HTTP server on 127.0.0.1 (port 0) serving that provider's endpoints under its base
URL exactly as gotrue.py calls them when `GOTRUE_EXTERNAL_<P>_URL` points at the fake, with the
real provider's JSON shapes.

    fake = GitHubFake()                   # .url goes into GOTRUE_EXTERNAL_GITHUB_URL
    fake.redirect_uri = callback_url      # the callback registered at the "provider"
    fake.emails = [Email("a@b.test")]     # the account the approving user has there
    fake.deny = True                      # the user refuses
    fake.close()

The authorize endpoint plays the user who approves: it answers 302 to
`redirect_uri?code=<fresh code>&state=<state>` (or `?error=access_denied&...&state=` when
`deny` is set) and records the query it got. The token endpoint checks
`grant_type=authorization_code`, the code (single use, bound to its redirect_uri and client),
and the client credentials (HTTP Basic or form fields, see `credentials`), and issues a bearer
token; the profile endpoints demand `Authorization: Bearer <that token>`. Every code, token and
error body the fake hands out is kept in `.leakables()` so a test can check that none of them
(nor the client secret) ever shows in gotrue.py's log.

Switches (plain attributes; set them before the step they affect):
    emails          list of Email(address, verified, primary); [] = the account has no email
    full_name, avatar_url
    deny            authorize answers with error=access_denied
    token_status    the token endpoint answers this HTTP status (with an error body) instead
    profile_status  every profile endpoint answers this status instead
    emails_status   only the emails endpoint (GitHub, GitLab, Bitbucket) answers this status
    slow_token, slow_profile   seconds to hold the answer (released early by close())
    credentials     "any" (Basic or form), "basic" (form refused), "form" (Basic refused with 401)
    token_reply     a dict to answer from the token endpoint instead of a fresh token (e.g. no access_token)
"""

import base64
import collections
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import urllib.parse

import jwt

Request = collections.namedtuple("Request", "method path query headers form")


class Email:
    def __init__(self, address, verified=True, primary=True):
        self.address, self.verified, self.primary = address, verified, primary

    def __repr__(self):
        return f"Email({self.address!r}, verified={self.verified}, primary={self.primary})"


class FakeProvider:
    """What every shape shares: the server, authorize, token, bearer checks, switches, records."""

    name = None             # gotrue's provider name
    env = None              # GOTRUE_EXTERNAL_<env>_...
    scope = None            # the scope gotrue.py must ask for
    authorize_path = None
    token_path = None
    prefix = ""             # path of .url below the server root (the OIDC realm)

    def __init__(self, host="127.0.0.1"):
        self.client_id = f"{self.name}-client-{secrets.token_hex(4)}"
        self.secret = f"{self.name}-secret-{secrets.token_hex(12)}"
        self.redirect_uri = None  # the registered callback; None accepts any
        # the account of the user who approves
        self.emails = [Email(f"{self.name}-{secrets.token_hex(5)}@example.com")]
        self.full_name = f"{self.name.title()} User"
        self.avatar_url = f"https://avatars.example.com/{self.name}/{secrets.token_hex(4)}.png"
        self.user_id = str(secrets.randbelow(10**9))
        # switches
        self.deny = False
        self.token_status = None
        self.profile_status = None
        self.emails_status = None
        self.slow_token = 0
        self.slow_profile = 0
        self.credentials = "any"
        self.token_reply = None
        # records
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.requests = []          # every request, in order
        self.authorize_queries = []  # the query of each authorize request (dict)
        self.token_requests = []    # Request of each token request
        self.profile_requests = []  # Request of each profile/emails request
        self.codes = {}             # code -> {"redirect_uri", "client_id", "used"}
        self.tokens = set()
        self.issued_codes, self.issued_tokens, self.error_bodies = [], [], []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                fake._dispatch(self)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.base = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # --- what tests use -----------------------------------------------------------------------

    @property
    def url(self):
        """The value of GOTRUE_EXTERNAL_<P>_URL."""
        return self.base + self.prefix

    @property
    def authorize_url(self):
        return self.url + self.authorize_path

    @property
    def email(self):
        return self.emails[0].address

    def leakables(self):
        """Everything that must never appear in gotrue.py's log."""
        with self.lock:
            return [self.secret, *self.issued_codes, *self.issued_tokens, *self.error_bodies]

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- plumbing -----------------------------------------------------------------------------

    def _dispatch(self, h):
        split = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        form = dict(urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True)) if body else {}
        req = Request(h.command, split.path, query, {k.lower(): v for k, v in h.headers.items()}, form)
        with self.lock:
            self.requests.append(req)
        path = split.path[len(self.prefix):] if split.path.startswith(self.prefix) else None
        routes = {(self.authorize_path, "GET"): self._authorize, (self.token_path, "POST"): self._token}
        for p in self.profile_paths():
            routes[(p, "GET")] = self._profile
        handler = routes.get((path, h.command)) or self._extra_route(path, h.command)
        try:
            if handler is None:
                self._send(h, 404, {"message": "Not Found"})
            else:
                handler(h, req, path)
        except OSError:  # gotrue.py gave up (its timeout) before the answer
            pass

    def _extra_route(self, path, method):
        return None

    def _send(self, h, status, body, headers=(), content_type="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)
        h.close_connection = True

    def _error_body(self, kind):
        """A provider error body carrying a unique marker (it must not reach gotrue.py's log)."""
        marker = f"{self.name}-{kind}-error-{secrets.token_hex(8)}"
        with self.lock:
            self.error_bodies.append(marker)
        return {"error": "server_error", "error_description": marker}

    # --- authorize: the user approves (or not) ---------------------------------------------------

    def _authorize(self, h, req, path):
        with self.lock:
            self.authorize_queries.append(dict(req.query))
        q = req.query
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect_uri or \
                (self.redirect_uri is not None and redirect_uri != self.redirect_uri):
            # real providers show an error page, they never redirect to an unregistered URI
            return self._send(h, 400, "<h1>The redirect_uri or client_id is not registered</h1>",
                              content_type="text/html")
        if self.deny:
            params = {"error": "access_denied", "error_description": "The user has denied your application access.",
                      "state": q.get("state", "")}
        else:
            code = f"fake-code-{self.name}-{secrets.token_urlsafe(18)}"
            with self.lock:
                self.codes[code] = {"redirect_uri": redirect_uri, "client_id": q.get("client_id"), "used": False}
                self.issued_codes.append(code)
            params = {"code": code, "state": q.get("state", "")}
        sep = "&" if "?" in redirect_uri else "?"
        self._send(h, 302, "", headers=[("Location", redirect_uri + sep + urllib.parse.urlencode(params))],
                   content_type="text/html")

    # --- token: the code exchange ------------------------------------------------------------------

    def _client_credentials(self, req):
        """(how, client_id, secret) from HTTP Basic or the form; (None, None, None) if neither."""
        auth = req.headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                user, _, pw = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except ValueError:
                return "basic", None, None
            return "basic", urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(pw)
        if "client_id" in req.form or "client_secret" in req.form:
            return "form", req.form.get("client_id"), req.form.get("client_secret")
        return None, None, None

    def _token(self, h, req, path):
        with self.lock:
            self.token_requests.append(req)
        if self.slow_token:
            self.release.wait(self.slow_token)
        if self.token_status:
            return self._send(h, self.token_status, self._error_body("token"))
        how, cid, secret = self._client_credentials(req)
        allowed = {"any": ("basic", "form"), "basic": ("basic",), "form": ("form",)}[self.credentials]
        if how not in allowed or cid != self.client_id or not hmac.compare_digest(secret or "", self.secret):
            return self._send(h, 401, {"error": "invalid_client", "error_description": "Client authentication failed"})
        if req.form.get("grant_type") != "authorization_code":
            return self._send(h, 400, {"error": "unsupported_grant_type"})
        code = req.form.get("code", "")
        with self.lock:
            entry = self.codes.get(code)
            valid = entry is not None and not entry["used"]
            if entry:
                entry["used"] = True  # single use, whatever follows
        if not valid or req.form.get("redirect_uri") != entry["redirect_uri"] or cid != entry["client_id"]:
            return self._send(h, 400, {"error": "invalid_grant",
                                       "error_description": "The provided authorization grant is invalid"})
        if self.token_reply is not None:
            return self._send(h, 200, self.token_reply)
        token = f"fake-token-{self.name}-{secrets.token_urlsafe(24)}"
        with self.lock:
            self.tokens.add(token)
            self.issued_tokens.append(token)
        self._token_answer(h, req, token)

    def _token_answer(self, h, req, token):
        self._send(h, 200, {"access_token": token, "token_type": "bearer", "expires_in": 3600, "scope": self.scope})

    # --- profile endpoints ---------------------------------------------------------------------------

    def profile_paths(self):
        return []

    def _profile(self, h, req, path):
        with self.lock:
            self.profile_requests.append(req)
        if self.slow_profile:
            self.release.wait(self.slow_profile)
        auth = req.headers.get("authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        with self.lock:
            known = token in self.tokens
        if not known:
            return self._send(h, 401, {"message": "Bad credentials"})
        if self.profile_status:
            return self._send(h, self.profile_status, self._error_body("profile"))
        if self.emails_status and path.endswith("/emails"):
            return self._send(h, self.emails_status, self._error_body("emails"))
        status, body = self.profile(path, req, token)
        self._send(h, status, body)

    def profile(self, path, req, token):
        raise NotImplementedError

    def primary(self):
        """The email a single-email provider shows: the first primary one, else the first."""
        return next((e for e in self.emails if e.primary), self.emails[0] if self.emails else None)


class GitHubFake(FakeProvider):
    """GitHub Enterprise layout (`URL/api/v3/...`). `/user`'s own `email` is the public profile
    address (`public_email`), which gotrue ignores; `/user/emails` is the list that counts. The
    token endpoint answers form-encoded unless asked for JSON, as GitHub does."""

    name, env, scope = "github", "GITHUB", "user:email"
    authorize_path, token_path = "/login/oauth/authorize", "/login/oauth/access_token"

    def __init__(self, host="127.0.0.1"):
        super().__init__(host)
        self.public_email = None

    def profile_paths(self):
        return ["/api/v3/user", "/api/v3/user/emails"]

    def _token_answer(self, h, req, token):
        if "json" in req.headers.get("accept", ""):
            return super()._token_answer(h, req, token)
        body = urllib.parse.urlencode({"access_token": token, "scope": self.scope, "token_type": "bearer"})
        self._send(h, 200, body, content_type="application/x-www-form-urlencoded; charset=utf-8")

    def profile(self, path, req, token):
        if path == "/api/v3/user":
            return 200, {"login": "octocat", "id": int(self.user_id), "type": "User", "name": self.full_name or None,
                         "avatar_url": self.avatar_url, "email": self.public_email}
        return 200, [{"email": e.address, "verified": e.verified, "primary": e.primary,
                      "visibility": "private" if e.primary else None} for e in self.emails]


class GitLabFake(FakeProvider):
    """`/api/v4/user` carries the primary address (`email`, verified iff `confirmed_at`);
    `/api/v4/user/emails` the secondary ones."""

    name, env, scope = "gitlab", "GITLAB", "read_user"
    authorize_path, token_path = "/oauth/authorize", "/oauth/token"

    def profile_paths(self):
        return ["/api/v4/user", "/api/v4/user/emails"]

    def profile(self, path, req, token):
        primary = self.primary()
        if path == "/api/v4/user":
            return 200, {"id": int(self.user_id), "username": "tanuki", "name": self.full_name,
                         "state": "active", "avatar_url": self.avatar_url,
                         "email": primary.address if primary else "",
                         "confirmed_at": "2021-03-04T05:06:07.000Z" if primary and primary.verified else None}
        return 200, [{"id": i + 1, "email": e.address,
                      "confirmed_at": "2021-03-04T05:06:07.000Z" if e.verified else None}
                     for i, e in enumerate(e for e in self.emails if e is not primary)]


class GoogleFake(FakeProvider):
    """userinfo v2: one address, `verified_email`."""

    name, env, scope = "google", "GOOGLE", "email profile"
    authorize_path, token_path = "/o/oauth2/auth", "/o/oauth2/token"

    def profile_paths(self):
        return ["/userinfo/v2/me"]

    def profile(self, path, req, token):
        body = {"id": self.user_id, "name": self.full_name, "given_name": self.full_name.split(" ")[0],
                "picture": self.avatar_url, "locale": "en"}
        primary = self.primary()
        if primary:
            body.update(email=primary.address, verified_email=primary.verified)
        return 200, body


class BitbucketFake(FakeProvider):
    """`/2.0/user` (display_name, avatar.href as in the spec table, and Bitbucket's own
    links.avatar.href) and the paged `/2.0/user/emails`."""

    name, env, scope = "bitbucket", "BITBUCKET", "account email"
    authorize_path, token_path = "/site/oauth2/authorize", "/site/oauth2/access_token"

    def profile_paths(self):
        return ["/2.0/user", "/2.0/user/emails"]

    def profile(self, path, req, token):
        if path == "/2.0/user":
            return 200, {"type": "user", "uuid": "{%s}" % self.user_id, "username": "bucket",
                         "display_name": self.full_name, "avatar": {"href": self.avatar_url},
                         "links": {"avatar": {"href": self.avatar_url}}}
        values = [{"type": "email", "email": e.address, "is_confirmed": e.verified, "is_primary": e.primary}
                  for e in self.emails]
        return 200, {"pagelen": 10, "page": 1, "size": len(values), "values": values}


class FacebookFake(FakeProvider):
    """Graph API `/me`: checks `appsecret_proof` (hex HMAC-SHA256 of the access token keyed with
    the client secret) and answers only the `fields` asked for, as Facebook does."""

    name, env, scope = "facebook", "FACEBOOK", "email"
    authorize_path, token_path = "/dialog/oauth", "/oauth/access_token"
    FIELDS = ("email", "first_name", "last_name", "name", "picture")

    def __init__(self, host="127.0.0.1"):
        super().__init__(host)
        self.first_name, self.last_name, self.full_name = "Ann", "Lee", "Ann B. Lee"

    def profile_paths(self):
        return ["/me"]

    def profile(self, path, req, token):
        proof = hmac.new(self.secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(req.query.get("appsecret_proof", ""), proof):
            return 400, {"error": {"message": "Invalid appsecret_proof provided in the API argument",
                                   "type": "GraphMethodException", "code": 100}}
        full = {"id": self.user_id, "first_name": self.first_name, "last_name": self.last_name,
                "name": self.full_name,
                "picture": {"data": {"height": 50, "width": 50, "is_silhouette": False, "url": self.avatar_url}}}
        primary = self.primary()
        if primary:
            full["email"] = primary.address
        asked = [f.strip() for f in req.query.get("fields", "").split(",") if f.strip()]
        return 200, {"id": self.user_id, **{k: full[k] for k in asked if k in full}}


class OIDCFake(FakeProvider):
    """A generic OpenID Connect provider, Keycloak-like: `.url` is the issuer
    (`BASE/realms/demo`), `/.well-known/openid-configuration` under it names the endpoints (on
    paths no convention would guess), the token answer carries an id_token, userinfo has `sub`,
    `email`, `email_verified` (left out when `omit_email_verified`), `name`, `picture`.
    `discovery_overrides` replaces members of the discovery document."""

    name, env, scope = "oidc", "OIDC", "openid email profile"
    prefix = "/realms/demo"
    authorize_path = "/protocol/openid-connect/auth"
    token_path = "/protocol/openid-connect/token"
    userinfo_path = "/protocol/openid-connect/userinfo"

    def __init__(self, host="127.0.0.1"):
        super().__init__(host)
        self.omit_email_verified = False
        self.discovery_overrides = {}
        self.discovery_fetches = 0

    def discovery(self):
        doc = {"issuer": self.url, "authorization_endpoint": self.url + self.authorize_path,
               "token_endpoint": self.url + self.token_path, "userinfo_endpoint": self.url + self.userinfo_path,
               "jwks_uri": self.url + "/protocol/openid-connect/certs",
               "response_types_supported": ["code"], "subject_types_supported": ["public"],
               "id_token_signing_alg_values_supported": ["HS256"],
               "scopes_supported": ["openid", "email", "profile"],
               "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}
        doc.update(self.discovery_overrides)
        return doc

    def _extra_route(self, path, method):
        if path == "/.well-known/openid-configuration" and method == "GET":
            return self._discovery
        return None

    def _discovery(self, h, req, path):
        with self.lock:
            self.discovery_fetches += 1
        self._send(h, 200, self.discovery())

    def profile_paths(self):
        return [self.userinfo_path]

    def _token_answer(self, h, req, token):
        primary = self.primary()
        id_token = jwt.encode({"iss": self.url, "sub": self.user_id, "aud": self.client_id,
                               "email": primary.address if primary else None, "iat": 1, "exp": 4102444800},
                              self.secret, algorithm="HS256")
        with self.lock:
            self.issued_tokens.append(id_token)
        self._send(h, 200, {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                            "id_token": id_token, "scope": self.scope})

    def profile(self, path, req, token):
        body = {"sub": self.user_id, "name": self.full_name, "picture": self.avatar_url,
                "preferred_username": "oidc-user"}
        primary = self.primary()
        if primary:
            body["email"] = primary.address
            if not self.omit_email_verified:
                body["email_verified"] = primary.verified
        return 200, body


SHAPES = {cls.name: cls for cls in (GitHubFake, GitLabFake, GoogleFake, BitbucketFake, FacebookFake, OIDCFake)}
