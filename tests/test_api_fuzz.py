"""Fuzzing every route of asrd's own OpenAPI schema with schemathesis, against a real server:
no 5xx, and every response (status, content type, body) conforms to the schema.

The server runs with the default URL guard (no private addresses, no server files), so URLs
the fuzzer makes up can never reach the test machine's network neighbours; URL timeouts are
short because a made-up public URL may not answer."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from asrd.app import create_app
from asrd.config import load_settings

from conftest import SERVER_ENV, AsrdServer


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    env = {**SERVER_ENV, "URL_CONNECT_TIMEOUT_S": "1", "URL_TOTAL_TIMEOUT_S": "2"}
    log_path = tmp_path_factory.mktemp("fuzz") / "asrd.log"
    with AsrdServer(env, log_path) as instance:
        yield instance


# The schema the server serves, built by the same factory (building the app loads no model).
schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


OPERATIONS = [result.ok() for result in schema.get_all_operations()]
EXAMPLES = int(os.environ.get("ASRD_FUZZ_EXAMPLES", "40"))


# Hypothesis driven by hand (schemathesis' pytest plugin does not run on pytest 9.2): valid
# inputs by the schema (positive) and invalid ones (negative), for every operation.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_api_conforms_and_never_fails(
    fuzzed_server: AsrdServer, operation: APIOperation, mode: GenerationMode
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=fuzzed_server.url, checks=CHECKS, timeout=30)

    try:
        call()
    except Unsatisfiable:
        # e.g. GET /hc has no input; a string path parameter can't be made invalid.
        assert mode is GenerationMode.NEGATIVE
        pytest.skip("no invalid input exists for this operation")
