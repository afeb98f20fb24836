"""/openapi.json describes every endpoint, and the app conforms to it (schemathesis over ASGI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from walkit.service.api import create_app, openapi_document

from .conftest import AUTH, build_context

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance, response_headers_conformance]


def test_openapi_describes_every_route(tmp_path: Path) -> None:
    ctx, _, _ = build_context(tmp_path, None, "unused")
    app = create_app(ctx)
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    routes = {(route.path, method.lower()) for route in app.routes for method in route.methods - {"HEAD"}}  # type: ignore[attr-defined]
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes == documented
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer", "description": "WALKIT_API_TOKEN"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "post":
                assert op["security"] == [{"bearerAuth": []}]
                assert {"401", "403", "500", "503"} <= set(op["responses"]), path
                assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
            else:
                assert op["security"] == []
    trigger = doc["paths"]["/backup/trigger"]["post"]["responses"]
    assert {"200", "429", "502", "503", "507"} <= set(trigger)
    assert trigger["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str, shop: str) -> Any:
    """The app over real parts (snapshots of ``shop``, upload() to the mock service), with a worker's counters."""
    live = {"running": True, "healthy": True, "phase": "idle", "events_captured": 3, "capture_lag_p99_seconds": None}
    ctx, _, _ = build_context(tmp_path_factory.mktemp("schema"), mongo_uri, shop, live=lambda: dict(live))
    return create_app(ctx)


def test_the_app_serves_the_document(api_app: Any) -> None:
    served = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    assert served.raw_schema == openapi_document()


# pytest 9 breaks schemathesis.pytest.from_fixture (it sets request.node._nodeid), so the schema is
# loaded from the same document at import time and each case is sent to the fixture's ASGI app.
schema = schemathesis.openapi.from_dict(openapi_document())
LABELS = [f"{method.upper()} {path}" for path, item in openapi_document()["paths"].items() for method in item]
SEEN: dict[str, set[int]] = {}


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_app_conforms_to_its_openapi(case: Any, api_app: Any) -> None:
    response = case.call_and_validate(app=api_app, headers=AUTH if case.method == "POST" else None, checks=CHECKS)
    assert response.status_code < 500
    SEEN.setdefault(case.operation.label, set()).add(response.status_code)


def test_the_conformance_run_reached_the_real_outcomes() -> None:
    """Runs after the one above (file order): every operation was called, the POSTs did their work."""
    if not SEEN:
        pytest.skip("the conformance run was not selected")
    assert set(SEEN) == set(LABELS), SEEN
    assert 201 in SEEN["POST /backup/snapshot"]
    assert {200, 429} <= SEEN["POST /backup/trigger"]  # the day's call once, then refused
    assert 200 in SEEN["GET /healthz"]
