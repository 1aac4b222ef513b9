"""Property-based fuzzing of the Lora routes from the OpenAPI document the server itself serves (schemathesis).

A real server on 127.0.0.1 (fresh data folder: embedded tiny SD1 model and the demo LoRAs, `--api-auth` on).
schemathesis reads `/openapi.json` over HTTP and generates requests for each Lora route and `refresh-loras` from its
schemas: valid ones (half of them aimed at real LoRA names, so the deep paths run: layer reports, thumbnails,
sidecar writes) and invalid ones. Each answer is checked: no 5xx, a status code the document declares, a body that
matches the declared schema and content type, and invalid input refused. Bounded (few examples per route, no
deadline) so it stays fast on two shared CPU cores.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from modules.host import WebUI
from modules.webui_server import ServerThread, create_app, load_startup_model

AUTH = ("fuzz", "fuzz-pass")
ROUTES = [("GET", "/sdapi/v1/loras"), ("POST", "/sdapi/v1/refresh-loras"), ("GET", "/sdapi/v1/loaded-loras"),
          ("GET", "/sdapi/v1/lora"), ("POST", "/sdapi/v1/lora/metadata"), ("GET", "/sdapi/v1/lora/preview"),
          ("GET", "/sdapi/v1/lora/thumb")]
WITH_INPUT = {"/sdapi/v1/lora", "/sdapi/v1/lora/metadata", "/sdapi/v1/lora/preview", "/sdapi/v1/lora/thumb"}
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in ROUTES] + \
    [(m, p, GenerationMode.NEGATIVE) for m, p in ROUTES if p in WITH_INPUT]  # routes without input cannot be negated
REAL_NAMES = ["demo_lora", "demo-loha", "demo_oft", "demo_full", "demo_norm"]
CHECKS = [not_a_server_error, openapi_checks.status_code_conformance, openapi_checks.content_type_conformance,
          openapi_checks.response_schema_conformance]
FUZZ_SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Base URL of a server with the demo LoRAs and the embedded model loaded."""
    data = tmp_path_factory.mktemp("lora-fuzz")
    webui = WebUI.create(["--data-dir", str(data), "--api-auth", f"{AUTH[0]}:{AUTH[1]}", "--nowebui"])
    load_startup_model(webui)
    thread = ServerThread(create_app(webui, ui=False), host="127.0.0.1", port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}"
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def api_schema(live):
    """The OpenAPI document as the server serves it, loaded over HTTP."""
    return schemathesis.openapi.from_url(f"{live}/openapi.json")


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        s.auth = AUTH
        yield s


def aim_at_real_lora(case, name: str | None) -> None:
    """Point a valid case at an existing LoRA (where it names one), so the code behind the 404 runs too."""
    if name is None:
        return
    if case.operation.path == "/sdapi/v1/lora":  # ?name= or SD.Next's ?lora=; the route needs one of them
        query = case.query if isinstance(case.query, dict) else {}
        key = "lora" if "lora" in query and "name" not in query else "name"
        case.query = {**query, key: name}
    elif isinstance(case.query, dict) and "name" in case.query:
        case.query["name"] = name
    if isinstance(case.body, dict) and "name" in case.body:
        case.body["name"] = name


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_lora_route_survives_fuzzing(api_schema, live, session, method, path, mode):
    operation = api_schema[path][method]
    checks = CHECKS + ([openapi_checks.negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    names = st.sampled_from([None, *REAL_NAMES]) if mode is GenerationMode.POSITIVE else st.none()
    statuses: list[int] = []

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(mode), name=names)
    def run(case, name) -> None:
        aim_at_real_lora(case, name)
        response = case.call_and_validate(base_url=live, session=session, checks=checks, timeout=60)
        statuses.append(response.status_code)

    run()
    assert statuses and max(statuses) < 500
    if mode is GenerationMode.POSITIVE:
        assert 200 in statuses, statuses  # the routes' real work ran, not only their error paths


def test_document_lists_every_lora_route(api_schema):
    """Every Lora route is in the document with its method, a summary and its error responses."""
    paths = api_schema.raw_schema["paths"]
    for method, path in ROUTES:
        operation = paths[path][method.lower()]
        assert operation["summary"] and {"200", "401", "413", "422"} <= set(operation["responses"])
