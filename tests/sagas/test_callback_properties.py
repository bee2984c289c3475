"""Hostile callbacks: any body, any token, any headers get an answer of the endpoint's set and
never a 5xx; the waiting step is only ever completed by its own token with a valid body. Any
completion message is applied or acknowledged as unusable, never handed back forever."""

from __future__ import annotations

import json

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.keys import METRICS, SAGAS
from proxy.sagas.completions import CompletionHandler
from saga_runner.brokers.base import CALLBACK_TOKEN_HEADER, Delivery
from saga_runner.brokers.settling import Verdict, settle
from saga_runner.states import StepStatus
from sagas.awaiting import awaiting_saga, call_back, charge_token, step_in
from sagas.conftest import SidecarFactory
from sagas.harness import ORDER, SidecarHarness

ANSWERS = {200, 202, 400, 404, 409, 410, 413}
TOKEN_CHARS = st.characters(codec="ascii", exclude_characters="/?#%")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: no store keeps them
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"outcome": st.sampled_from(["success", "failure", "heartbeat", "other", ""])},
        optional={"result": json_values, "extra": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)
headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Content-Encoding", "Idempotency-Key", "X-Anything"]),
    st.text(
        alphabet=st.characters(codec="ascii", min_codepoint=32, max_codepoint=126), max_size=20
    ),
    max_size=3,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, sent_headers=headers, token=st.text(TOKEN_CHARS, min_size=1, max_size=60))
async def test_any_callback_gets_an_answer_of_the_endpoint_and_never_a_5xx(
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
    body: bytes,
    sent_headers: dict[str, str],
    token: str,
) -> None:
    sidecar, real = await waiting(make_sidecar, client)
    for target in (token, real):
        status, _, answer = await call_back(
            client, sidecar, target, data=body, headers=sent_headers
        )
        assert status in ANSWERS, (status, answer)
        if status == 202:
            assert target == real


_made: dict[int, tuple[SidecarHarness, str]] = {}


async def waiting(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> tuple[SidecarHarness, str]:
    """The test's sidecar (made at its first example) and the token of its waiting step."""
    if id(make_sidecar) not in _made:
        sidecar = await make_sidecar(awaiting_saga())
        status, _, answer = await sidecar.post(client, "/api/orders", ORDER)
        assert status == 202, answer
        await step_in(sidecar, answer["saga_id"], "charge", StepStatus.WAITING)
        _made[id(make_sidecar)] = (sidecar, await charge_token(sidecar))
    return _made[id(make_sidecar)]


message_headers = st.dictionaries(
    st.sampled_from([CALLBACK_TOKEN_HEADER, "content-type", "saga-callback", "x-anything"]),
    st.text(max_size=40),
    max_size=3,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, sent_headers=message_headers, real_token=st.booleans())
async def test_any_completion_message_is_applied_or_acknowledged_as_unusable_never_retried(
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
    body: bytes,
    sent_headers: dict[str, str],
    real_token: bool,
) -> None:
    sidecar, real = await waiting(make_sidecar, client)
    headers = {**sent_headers, CALLBACK_TOKEN_HEADER: real} if real_token else sent_headers
    handler = CompletionHandler("jobs", sidecar.public[SAGAS], sidecar.public[METRICS])
    rejected: list[str] = []
    delivery = Delivery(body=body, headers=headers, message_id="m-1", redelivered=False)

    verdict = await settle("jobs", handler, delivery, rejected.append)

    # The store is up: nothing is handed back to be delivered again, whatever came.
    assert verdict is Verdict.ACK
    if not rejected:  # applied: only the real token with a callback's body does that
        assert headers.get(CALLBACK_TOKEN_HEADER) == real
        assert json.loads(body)["outcome"] in ("success", "failure", "heartbeat")
