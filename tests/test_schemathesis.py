"""schemathesis against the bridge's own OpenAPI schema (`/openapi.json` of a real bridge).

Two properties, each over every operation of the schema, with data schemathesis derives
from it: positive (valid by the schema) and negative (invalid by the schema):

1. no 5xx, whatever the input;
2. every response whose status the schema declares conforms to what it declares (JSON
   body schema, content type, headers).

How the run is bounded, so both take well under 90 s on two cores:

- at most MAX_EXAMPLES per operation and generation mode, no shrinking (a failure is
  reported with the exact request as a curl command, not minimised), no example database;
- a per-example deadline and a per-request timeout: a request that hangs is a failure;
- the Listen routes wait up to their `timeout` (the schema allows 86,400 s): the bridge
  under test caps every Listen at LISTEN_CAP_S with its own setting
  (BRIDGE_LISTEN_TIMEOUT_MAX_S), so the schema is fuzzed as published and no call waits.

Session ids: the schema declares a plain string, so most generated ids are invalid and
would only ever exercise the 422 path. Half of the cases therefore draw the id from
valid ones (a few fixed, seeded with messages, and random ones matching the protocol's
`[A-Za-z0-9_.:-]{1,128}`), so the 200 and 404 paths are fuzzed too.

The streamed route is included: schemathesis sends its body in one piece, which the
bridge reads through the same chunk decoder as a chunked one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from tests.conftest import StartBridge
from tests.support import RunningBridge

MAX_EXAMPLES = 40  # per operation and generation mode
DEADLINE = timedelta(seconds=3)  # per example: one request, generation included
REQUEST_TIMEOUT_S = 5.0
LISTEN_CAP_S = 0.05
SEEDED = ("fuzz-a", "fuzz-b", "fuzz:c.1")
VALID_IDS = st.sampled_from(SEEDED) | st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True)

Check = Callable[..., Any]


@dataclass
class Fuzzed:
    """What one pass over the schema saw."""

    cases: int = 0
    failures: list[str] = field(default_factory=list)
    statuses: dict[str, set[int]] = field(default_factory=dict)


def _fuzz_bridge(start_bridge: StartBridge) -> RunningBridge:
    bridge = start_bridge(store="sqlite", env={"BRIDGE_LISTEN_TIMEOUT_MAX_S": str(LISTEN_CAP_S)})
    with requests.Session() as http:
        for session in SEEDED:
            resp = http.post(
                f"{bridge.url}/api/v1/sessions/{session}/messages",
                json={"role": "user", "content": "seed"},
                timeout=REQUEST_TIMEOUT_S,
            )
            resp.raise_for_status()
    return bridge


def _strategy(operation: Any, mode: GenerationMode) -> Any:
    """Schemathesis' cases for `operation`, half of them with a valid session id."""
    generated = operation.as_strategy(generation_mode=mode)
    names = {p.name for p in operation.path_parameters}
    if "session_id" not in names:
        return generated
    with_valid_id = VALID_IDS.flatmap(
        lambda sid: operation.as_strategy(generation_mode=mode, path_parameters={"session_id": sid})
    )
    return st.one_of(generated, with_valid_id)


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    bridge: RunningBridge,
    http: requests.Session,
    checks: list[Check],
    seen: Fuzzed,
) -> None:
    """Up to MAX_EXAMPLES cases of one operation in one mode; failures go to `seen`."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=DEADLINE,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=_strategy(operation, mode))
    def one(case: Any) -> None:
        seen.cases += 1
        response = case.call(base_url=bridge.url, session=http, timeout=REQUEST_TIMEOUT_S)
        seen.statuses.setdefault(operation.label, set()).add(response.status_code)
        try:
            case.validate_response(response, checks=checks)
        except BaseExceptionGroup as group:  # schemathesis' FailureGroup: the checks failed
            if len(seen.failures) < 30:
                seen.failures.append(f"{operation.label} ({mode.value}): {group}")

    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        # Nothing in this operation can be made invalid (no parameters, or only an
        # unconstrained string): there is no negative case to send.
        pass
    except Exception as exc:  # a request that failed, or one past the deadline
        seen.failures.append(f"{operation.label} ({mode.value}): {exc!r}"[:2000])


def _fuzz(bridge: RunningBridge, checks: list[Check]) -> Fuzzed:
    """Run `checks` on the cases of every operation in both modes; never stop early."""
    schema = schemathesis.openapi.from_url(f"{bridge.url}/openapi.json")
    seen = Fuzzed()
    with requests.Session() as http:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(result.ok(), mode, bridge, http, checks, seen)
    return seen


@pytest.mark.slow
def test_no_5xx_for_any_input(start_bridge: StartBridge) -> None:
    """No input, valid or invalid by the schema, gets a 5xx or a hang.

    Not `negative_data_rejection` as well: the bridge validates JSON bodies in
    pydantic's default lax mode, so a template's `{"port": true}` (stored as 1) or
    `{"write_speed": "0.2"}` is accepted where the schema says integer or number. Whether
    to be strict there is a compatibility decision (flows built for the original may send
    numbers as strings), reported to the lead rather than asserted here."""
    bridge = _fuzz_bridge(start_bridge)
    started = time.monotonic()
    seen = _fuzz(bridge, [not_a_server_error])
    elapsed = time.monotonic() - started
    assert not seen.failures, f"{len(seen.failures)} failures:\n\n" + "\n\n".join(seen.failures)
    # Enough happened for the property to mean something: hundreds of cases, and valid
    # session ids reached past validation (200s and 404s, not only 422s).
    assert seen.cases > 200, seen.cases
    all_statuses = set().union(*seen.statuses.values())
    assert {200, 404, 422} <= all_statuses, all_statuses
    assert elapsed < 60, f"the fuzzing took {elapsed:.0f} s"
    assert (requests.get(f"{bridge.url}/healthz", timeout=REQUEST_TIMEOUT_S)).status_code == 200


@pytest.mark.slow
def test_responses_conform_to_the_schema(start_bridge: StartBridge) -> None:
    """Each response whose status the schema declares has the declared content type and
    matches the declared body schema; statuses the schema does not declare (404, 413, ...)
    are not judged here."""
    bridge = _fuzz_bridge(start_bridge)
    seen = _fuzz(
        bridge,
        [response_schema_conformance, content_type_conformance, response_headers_conformance],
    )
    assert not seen.failures, f"{len(seen.failures)} failures:\n\n" + "\n\n".join(seen.failures)
    assert seen.cases > 200, seen.cases
