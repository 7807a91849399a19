r"""The contract, fuzzed: schemathesis generates requests from openapi.yaml against a live server
(SQLite, real SMTP, export and admin console on, a GitHub provider on a closed loopback port)
with admin credentials (the operator token) and a user's access token, and checks every response:

* not_a_server_error: no 5xx;
* no_python_traceback (below): no Python traceback in any body;
* status_code_conformance, content_type_conformance, response_schema_conformance,
  response_headers_conformance: the status is documented for the operation, the Content-Type
  is the documented one, the body and the documented headers match the document's schemas;

and afterwards that the server logged no traceback either (failures in background work).

Phases: examples (from the document), coverage (boundary and invalid values of every parameter),
fuzzing (random valid and invalid requests; header values may carry bytes 0x80-0xFF) and
stateful (sequences following the links schemathesis infers, e.g. create a user, then read,
update and delete it).

Bounded and reproducible: deterministic generation (Hypothesis derandomized; the seed is fixed
as well), one worker, GOTRUE_FUZZ_EXAMPLES (default 200) examples per operation and phase, no
example database or cache carried between runs, pinned schemathesis and hypothesis; the run is a
subprocess with a hard timeout. Set GOTRUE_FUZZ=0 to skip it.

A failure prints schemathesis's report with a curl command per failing request (the server is
gone by then: start one, replace the URL and the tokens). Note that curl's `$'\xc2\x8d'` in those
commands is the UTF-8 spelling of what went on the wire as the single byte 0x8D.
"""

import os
import re
import subprocess
import sys
import time

import pytest

try:
    import schemathesis
except ImportError:  # the module is then skipped; the check below is only for the fuzzer's process
    schemathesis = None

from conftest import ROOT, unique_email

DOC_PATH = os.path.join(ROOT, "openapi.yaml")
HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261203
EXAMPLES = int(os.environ.get("GOTRUE_FUZZ_EXAMPLES", "200"))
RUN_TIMEOUT = 900  # seconds: only a guard against a hang; a run takes about 2 minutes on an idle machine
EXPORT_SECRET = "fuzz-export-secret"
OPERATOR_TOKEN = "fuzz-operator-token"

TRACEBACK = re.compile(r'Traceback \(most recent call last\)|File "[^"]+", line \d+')

if schemathesis is not None:
    @schemathesis.check
    def no_python_traceback(ctx, response, case):
        """No Python traceback in any response body, whatever its status."""
        text = (response.content or b"").decode("utf-8", "replace")
        if TRACEBACK.search(text):
            raise AssertionError(f"Python traceback in the response body:\n{text[:2000]}")
        return None


CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "no_python_traceback"]

CONFIG = """
seed = {seed}
workers = 1
max-redirects = 0          # /authorize and /callback redirect to providers and sites: never follow
request-timeout = 30
hooks = "test_fuzz"        # registers no_python_traceback in the fuzzer's process
continue-on-failure = true
suppress-health-check = ["all"]

[generation]
mode = "all"               # valid and invalid inputs
max-examples = {examples}
deterministic = true
database = "none"          # nothing carried over from an earlier run
unique-inputs = true

[cache]
enabled = false

[phases.fuzzing.generation]
codec = "latin-1"          # lets header values carry bytes 0x80-0xFF (ASCII only by default)

[phases.stateful]
max-steps = {steps}

[output.sanitization]
enabled = false            # the tokens are throwaway; the reproductions should be complete

[auth.openapi.adminBearer]
bearer = "${{FUZZ_ADMIN_TOKEN}}"

[auth.openapi.userBearer]
bearer = "${{FUZZ_USER_TOKEN}}"

[[operations]]                 # the operator routes only answer 404 in single-instance mode
include-tag = "operator"
enabled = false

[[operations]]
include-path = "/admin/users/export"
parameters = {{ "header.Export-Secret" = "{export_secret}" }}
"""


pytestmark = [
    pytest.mark.skipif(os.environ.get("GOTRUE_FUZZ") == "0", reason="GOTRUE_FUZZ=0"),
    pytest.mark.skipif(schemathesis is None, reason="schemathesis is not installed (tests/requirements.txt)"),
]


def test_fuzz_the_contract(make_server, tmp_path):
    server = make_server(
        "sqlite",
        GOTRUE_API_EXPORT_SECRET=EXPORT_SECRET, GOTRUE_OPERATOR_TOKEN=OPERATOR_TOKEN, GOTRUE_ADMIN_UI_ENABLED="true",
        # a usable provider, so that /authorize can answer its 302 (to a closed loopback port:
        # the fuzzer follows no redirect)
        GOTRUE_EXTERNAL_GITHUB_ENABLED="true", GOTRUE_EXTERNAL_GITHUB_CLIENT_ID="fuzz-client",
        GOTRUE_EXTERNAL_GITHUB_SECRET="fuzz-secret",
        GOTRUE_EXTERNAL_GITHUB_REDIRECT_URI="https://site.example.com/.netlify/identity/callback",
        GOTRUE_EXTERNAL_GITHUB_URL="http://127.0.0.1:9",
    )
    # The admin credential is the operator token: an admin user's own token stops working once
    # the fuzzer, following links from the user list, deletes or demotes that user, and the rest
    # of the run would only see 401s. The operator acts in whatever audience X-JWT-AUD names, so
    # the admin handlers are reached whatever header the fuzzer sends.
    admin_token = OPERATOR_TOKEN
    # the user lives in an audience of its own, which the admin listings the fuzzer reads (the
    # default audience) do not show, so that its links rarely lead to deleting it
    user, user_aud = unique_email("fuzz-user"), {"X-JWT-AUD": "fuzz-users"}
    server.confirmed_user(user, headers=user_aud)
    user_token = server.login(user, headers=user_aud)["access_token"]

    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(seed=SEED, examples=EXAMPLES, steps=max(EXAMPLES // 3, 5),
                                    export_secret=EXPORT_SECRET))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEMATHESIS_", "HYPOTHESIS_"))}
    env.update(FUZZ_ADMIN_TOKEN=admin_token, FUZZ_USER_TOKEN=user_token, NO_COLOR="1", COLUMNS="120",
               PYTHONPATH=os.pathsep.join([HERE, ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run", DOC_PATH,
               "--url", server.url, "--checks", ",".join(CHECKS)]
    started = time.monotonic()
    try:
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"the fuzz run took over {RUN_TIMEOUT} s:\n{out[-20000:]}")
    took = time.monotonic() - started
    report = run.stdout + run.stderr
    user_after = server.get("/user", token=user_token).status_code
    print(f"schemathesis ran {took:.0f} s ({EXAMPLES} examples per operation and phase); afterwards GET /user"
          f" with the user's token answered {user_after}\n{report[-6000:]}")
    errors = sorted(set(re.findall(r"^(?:\w+\.)*\w*(?:Error|Exception)\b.*$", server.log(), re.M)))[:30]
    causes = "\n".join(["", "the server logged these exceptions:", *errors]) if errors else ""
    assert run.returncode == 0, f"the fuzzer found failures (exit {run.returncode}):\n{report[-30000:]}{causes}"
    assert "Traceback" not in server.log(), f"the server logged a traceback:\n{server.log()[-20000:]}"


def test_the_traceback_check_catches_a_traceback():
    class Response:
        def __init__(self, content):
            self.content = content
    body = b'Traceback (most recent call last):\n  File "/work/main/gotrue.py", line 1, in <module>\nValueError: x'
    with pytest.raises(AssertionError, match="Python traceback"):
        no_python_traceback(None, Response(body), None)
    no_python_traceback(None, Response(b'{"code":500,"msg":"Internal server error","error_id":"x"}'), None)
