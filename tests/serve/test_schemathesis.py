"""Property-based API test: cases generated from the OpenAPI spec — valid and invalid
(schemathesis' positive and negative modes) — never get a 5xx.

Driven through hypothesis directly (schemathesis' pytest plugin needs a pytest older than
the one we pin), one generation run per operation and mode.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from recfm.serve.app import create_app  # noqa: E402
from recfm.serve.config import ServeConfig  # noqa: E402

EXAMPLES = 25


@pytest.fixture(scope="module")
def api_schema(served):
    app = create_app(served.run, ServeConfig(cache_mb=8))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_generated_requests_never_get_a_5xx(api_schema):
    operations = [r.ok() for r in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/recommend", "POST /v1/users/embed", "POST /v1/collections",
            "GET /v1/items/{item_id}/similar", "POST /admin/reload"} <= labels
    statuses: dict[str, set[int]] = {}
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                response = case.call()
                statuses.setdefault(op.label, set()).add(response.status_code)
                assert response.status_code < 500, (op.label, mode, case.body,
                                                     case.query, response.text[:300])

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
                assert mode == schemathesis.GenerationMode.NEGATIVE
    seen = set().union(*statuses.values())
    assert 200 in seen and 422 in seen  # both valid and refused requests were generated
