"""Fuzzing the REST API from its own OpenAPI schema (schemathesis): no request it can build,
valid or not, gets a 5xx or an answer that breaks the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from neurosono.serve import ServeSettings, create_app
from neurosono.serve.engine import Engine

pytestmark = pytest.mark.slow
APP = create_app(ServeSettings())
SCHEMA = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def models():
    APP.state.engine = Engine.load(ServeSettings())
    yield
    APP.state.engine.close()


@SCHEMA.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_never_fails_on_what_its_schema_allows(case) -> None:
    # Every other check stays on (no 5xx, status codes, content types, headers and bodies as
    # the schema says). A schema-valid body may still be refused with a 4xx: a schema cannot
    # say that an image must be an ultrasound plane of at least 32 px.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
