"""The OpenAPI schema describes the API: a response schema for every success, Corral's error
body for every error status, constraints on names and numbers; and schemathesis, driven by
that schema against a real daemon (no QEMU), finds no 5xx, no undocumented status and no
answer that breaks its schema."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from corral.api.app import create_app
from corral.config import Paths
from corral.service.manager import Manager

from .served import Served, served

METHODS = ("get", "post", "put", "delete", "patch")


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("openapi")
    return create_app(Manager(Paths(home)), manage_lifecycle=False).openapi()


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def test_every_route_documents_its_success_body(schema: dict[str, Any]) -> None:
    missing = []
    for path, method, op in _operations(schema):
        ok = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        if not ok:
            missing.append(f"{method} {path}: no success status")
        for status, resp in ok.items():
            if status == "204":
                continue
            content = resp.get("content", {})
            schemas = [c.get("schema") for c in content.values()]
            if not schemas or not all(schemas) or any(s == {} for s in schemas):
                missing.append(f"{method} {path} {status}: no response schema")
    assert missing == []


def test_every_error_status_has_corrals_body(schema: dict[str, Any]) -> None:
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {
        "error", "kind", "message", "facts"}
    for path, method, op in _operations(schema):
        errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        assert {"422", "500"} <= set(errors), (method, path)
        for status, resp in errors.items():
            ref = resp["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/Error"), (method, path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_names_and_numbers_are_constrained(schema: dict[str, Any]) -> None:
    for path, method, op in _operations(schema):
        for param in op.get("parameters", []):
            s = param["schema"]
            if param["in"] == "path" and param["name"] in ("name", "disk", "snapshot", "image",
                                                           "network"):
                assert s["pattern"] and s["maxLength"] == 32, (method, path, param)
            if param["name"] == "timeout":
                assert s["exclusiveMinimum"] == 0 and s["maximum"] == 86400, (method, path)
    vm = schema["components"]["schemas"]["CreateSpec"]["properties"]
    assert vm["name"]["pattern"] and vm["cpus"]["maximum"] == 255


# --- schemathesis -----------------------------------------------------------------------------
# operations that would boot QEMU or touch the host's network are left out: the unit suite
# runs no QEMU and must not make bridges on the machine it runs on
SKIP_OPS = {
    ("POST", "/v1/vms/{name}/start"), ("POST", "/v1/vms/{name}/restore"),
    ("POST", "/v1/vms/{name}/reboot"), ("POST", "/v1/batch"),
    ("POST", "/v1/networks"), ("POST", "/v1/routers"), ("POST", "/v1/firewall/rules"),
    ("PUT", "/v1/networks/{name}/policy"), ("POST", "/v1/routers/{name}/networks"),
    ("POST", "/v1/routers/{name}/forwards"), ("POST", "/v1/vms/{name}/nics"),
    ("POST", "/v1/import"), ("POST", "/v1/vms/{name}/export"),
    ("DELETE", "/v1/tokens/{name}"),  # it would revoke the fuzzer's own token
    ("GET", "/v1/events/stream"),  # never ends by design (tests/unit/test_web.py covers it)
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("fuzz") / "home") as d:
        yield d


def _fuzz(op: Any, url: str, failures: list[str], calls: dict[str, int],
          headers: dict[str, str]) -> None:
    """Run schemathesis' cases of one operation (valid and invalid data); record failures."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis import checks as sc

    wanted = [sc.not_a_server_error, sc.status_code_conformance,
              sc.response_schema_conformance, sc.content_type_conformance]

    @given(case=st.one_of(op.as_strategy(GenerationMode.POSITIVE),
                          op.as_strategy(GenerationMode.NEGATIVE)))
    @settings(max_examples=40, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        if case.query:
            case.query.pop("start", None)  # run = create + start would boot QEMU
        calls[op.label] = calls.get(op.label, 0) + 1
        try:
            case.call_and_validate(base_url=url, checks=wanted, timeout=30, headers=headers)
        except Exception as err:  # one line each, all operations
            failures.append(f"{case.method} {case.formatted_path}: "
                            f"{str(err).strip().splitlines()[0][:300]}")
            raise

    with contextlib.suppress(Exception):  # what failed is in `failures`
        check()


def test_schemathesis_finds_nothing(daemon: Served) -> None:
    """Against the remote listener's app, with an admin token (a request without one is
    401 there)."""
    import schemathesis

    from corral.client import Client

    with Client(daemon.socket, timeout=10) as c:
        secret = c.token_create("fuzz", "admin")["secret"]
    schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in SKIP_OPS:
            _fuzz(op, daemon.url, failures, calls, {"Authorization": f"Bearer {secret}"})
    assert len(calls) >= 35 and sum(calls.values()) >= 35 * 10, calls
    assert daemon.alive()
    assert failures == [], json.dumps(failures, indent=1)


def test_security_answers_are_documented(schema: dict[str, Any]) -> None:
    for path, method, op in _operations(schema):
        if path.startswith("/v1/"):
            assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
            assert "Retry-After" in op["responses"]["429"]["headers"], (method, path)


def test_the_remote_listener_needs_a_token(daemon: Served) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{daemon.url}/v1/vms", timeout=10)
    assert err.value.code == 401
    assert json.loads(err.value.read())["kind"] == "unauthorized"
