"""Every operation of the gateway's OpenAPI schema, fuzzed by schemathesis in process on
real Postgres: bodies, headers, paths and queries generated from the schema, valid and
invalid, a bounded and seeded number per operation, each sent without a key and with an
admin key (feedback bodies also with a served answer's real id and token, so that their
other fields get past the id). Target: no 5xx; every 4xx that refuses an input names it
(our error's ``param``, or FastAPI's ``loc``)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from controlplane.api import create_app
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import config, stub_pool

pytestmark = pytest.mark.reliability

ADMIN_KEY = "sk-schema-admin-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# a deeper run: BANDITCTL_FUZZ_EXAMPLES=500 (other cases than CI's, still seeded)
EXAMPLES_PER_OPERATION = int(os.environ.get("BANDITCTL_FUZZ_EXAMPLES", "25"))
OPERATIONS = 22  # at least these; a route added later is fuzzed too
# answers that refuse the caller, not an input: they name no field
NO_FIELD = {401, 403, 429}
FEEDBACK_PATHS = ("/v1/feedback", "/v1/feedback/batch")

FUZZ = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,  # the same cases every run
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows the case found
)


@dataclass
class Fuzzed:
    schema: Any
    http: TestClient  # for the variants rating the served answer
    answer: dict[str, str]  # a served answer's request_id and feedback_token
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    last_refusals: dict[tuple[str, str], str] = field(default_factory=dict)  # for the report


@pytest.fixture
def fuzzed(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_SCHEMA_ADMIN", ADMIN_KEY)
    cfg = config(
        auth={"open_chat": True, "open_dashboard": True},
        api_keys=[{"name": "ops", "key_env": "BANDITCTL_SCHEMA_ADMIN", "scopes": ["admin"]}],
    )
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    core = GatewayCore(
        cfg,
        engine,
        stub_pool,
        FeedbackTokens("schema-secret-0123456789", 3600),
        listen=False,
    )
    app = create_app(core, start_background=False)
    http = TestClient(app)
    served = http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert served.status_code == 200, served.text
    assert core.writer.flush()  # its decision is stored: a feedback key may rate it
    meta = served.json()["banditctl"]
    answer = {"request_id": meta["request_id"], "feedback_token": meta["feedback_token"]}
    return Fuzzed(schemathesis.openapi.from_asgi("/openapi.json", app), http, answer)


def _names_its_field(response: Any) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return bool(body["error"].get("param"))
    detail = body.get("detail") if isinstance(body, dict) else None
    return isinstance(detail, list) and bool(detail) and bool(detail[0].get("loc"))


def _with_answer(body: Any, answer: dict[str, str]) -> Any:
    """A feedback body (or batch) rating the served answer, its other fields as generated."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("items"), list):
        items = [{**i, **answer} if isinstance(i, dict) else i for i in body["items"]]
        return {**body, "items": items}
    return {**body, **answer}


def _check(fz: Fuzzed, case: Any) -> None:
    responses = [case.call(), case.call(headers=ADMIN)]
    if case.path in FEEDBACK_PATHS and (rated := _with_answer(case.body, fz.answer)):
        for headers in ({}, ADMIN):
            responses.append(fz.http.post(case.formatted_path, json=rated, headers=headers))
    for response in responses:
        fz.statuses[(case.method, case.path, response.status_code)] += 1
        if response.status_code >= 300:
            fz.last_refusals[(case.method, case.path)] = response.text[:300]
        what = (
            f"{case.method} {case.formatted_path} query={case.query!r:.200} "
            f"headers={case.headers!r:.200} body={case.body!r:.300} -> {response.text[:300]}"
        )
        assert response.status_code < 500, what
        if 400 <= response.status_code < 500 and response.status_code not in NO_FIELD:
            assert _names_its_field(response), what


def test_no_operation_answers_5xx_and_every_refusal_names_its_field(fuzzed):
    operations = [op.ok() for op in fuzzed.schema.get_all_operations()]
    assert len(operations) >= OPERATIONS
    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @FUZZ
        @given(case=cases)
        def fuzz(case: Any) -> None:
            _check(fuzzed, case)

        fuzz()
    # the generated requests got past the checks too, not only refused
    accepted = {(m, p) for (m, p, status) in fuzzed.statuses if status < 300}
    for must in (
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/route/explain"),
        ("POST", "/v1/feedback"),
        ("POST", "/v1/feedback/batch"),
        ("POST", "/v1/policies/candidates"),
        ("GET", "/v1/dashboard/routing"),
    ):
        seen = {k[2]: n for k, n in fuzzed.statuses.items() if k[:2] == must}
        assert must in accepted, (must, seen, fuzzed.last_refusals.get(must))


def test_ids_and_limits_beyond_postgres_integers_are_refused_naming_them(fuzzed):
    # found by the fuzzing above: these reached Postgres, which refused the integer, and
    # answered 422 without naming the parameter
    http = fuzzed.http
    for method, path, where in (
        ("GET", "/v1/policies/candidates/2147483648", ["path", "candidate_id"]),
        ("GET", "/v1/policies/candidates/331110085568", ["path", "candidate_id"]),
        ("POST", "/v1/policies/candidates/331110085568/promote", ["path", "candidate_id"]),
        ("POST", "/v1/policies/candidates/-3/retire", ["path", "candidate_id"]),
        ("GET", "/v1/policies/releases?limit=9223372036854775808", ["query", "limit"]),
        ("GET", "/v1/policies/releases?limit=-1", ["query", "limit"]),
    ):
        resp = http.request(method, path, headers=ADMIN)
        assert resp.status_code == 422, (path, resp.text)
        assert resp.json()["detail"][0]["loc"] == where, (path, resp.text)
    assert http.get("/v1/policies/candidates/2147483647").status_code == 404
    assert http.get("/v1/policies/releases?limit=10000").status_code == 200
