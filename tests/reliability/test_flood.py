"""A flood from one address is not a denial of service for the others: anonymous requests
(open chat, token feedback, open dashboard reads) count per client address
(``limits.anonymous_requests_per_minute``) and answer 429 with ``Retry-After`` above it,
while other addresses and keyed traffic (with its own per-key limits) are served.
X-Forwarded-For counts only from a trusted proxy. Real HTTP on loopback from distinct
source addresses (127.0.0.2, .3, .4), real Postgres, a fake clock for the buckets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import pytest

from controlplane.address_limits import AddressLimiter, ClientAddresses
from controlplane.admission import Admission
from controlplane.api import create_app
from controlplane.config import ConfigError
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.limits import LimitExceeded
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import BODY, config, stub_pool
from tests.reliability.served import served

pytestmark = pytest.mark.reliability

PER_MINUTE = 30
FLOODER, OTHER, PROXY = "127.0.0.2", "127.0.0.3", "127.0.0.4"
STEADY, METERED = "sk-steady-0123456789abcdef", "sk-metered-0123456789abcdef"
KEY_RPM = 3


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def _gateway(engine, monkeypatch, clock: Clock) -> Iterator[dict[str, httpx.Client]]:
    monkeypatch.setenv("BANDITCTL_T_STEADY", STEADY)
    monkeypatch.setenv("BANDITCTL_T_METERED", METERED)
    cfg = config(
        auth={"open_chat": True, "open_dashboard": True},
        limits={"anonymous_requests_per_minute": PER_MINUTE, "trusted_proxies": [PROXY]},
        api_keys=[
            {"name": "steady", "key_env": "BANDITCTL_T_STEADY", "scopes": ["chat"]},
            {"name": "metered", "key_env": "BANDITCTL_T_METERED", "scopes": ["chat"],
             "requests_per_minute": KEY_RPM},
        ],
    )  # fmt: skip
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    core = GatewayCore(
        cfg, engine, stub_pool, FeedbackTokens("flood-secret-0123456789", 600), listen=False
    )
    app = create_app(core, admission=Admission(cfg, engine, clock=clock))
    with served(app) as http, ExitStack() as stack:
        clients = {
            source: stack.enter_context(
                httpx.Client(
                    base_url=str(http.base_url),
                    transport=httpx.HTTPTransport(local_address=source),
                    timeout=60,
                )
            )
            for source in (FLOODER, OTHER, PROXY)
        }
        yield clients


def _refused(resp: httpx.Response, code: str = "anonymous_requests_per_minute") -> bool:
    if resp.status_code != 429:
        return False
    assert int(resp.headers["retry-after"]) >= 1, resp.headers
    assert resp.json()["error"]["code"] == code, resp.text
    return True


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_one_address_flooding_leaves_the_others_served(engine, monkeypatch):
    clock = Clock()
    with _gateway(engine, monkeypatch, clock) as by:
        flood, other, proxy = by[FLOODER], by[OTHER], by[PROXY]

        def flood_one(i: int) -> int:
            path = ("/v1/chat/completions", "/v1/dashboard/overview", "/v1/stats")[i % 3]
            resp = flood.post(path, json=BODY) if i % 3 == 0 else flood.get(path)
            return 0 if _refused(resp) else resp.status_code

        def other_one(_: int) -> int:
            return other.post("/v1/chat/completions", json=BODY).status_code

        with ThreadPoolExecutor(8) as pool:  # the flood and the other address at once
            flooded = pool.map(flood_one, range(300))
            served_other = pool.map(other_one, range(10))
            flooded, served_other = Counter(flooded), Counter(served_other)
        assert flooded == {200: PER_MINUTE, 0: 300 - PER_MINUTE}, flooded
        assert served_other == {200: 10}

        # what else the other address does goes on too: feedback with its token, reads
        answer = other.post("/v1/chat/completions", json=BODY).json()["banditctl"]
        rating = {"request_id": answer["request_id"], "feedback_token": answer["feedback_token"],
                  "quality": 1.0}  # fmt: skip
        assert other.post("/v1/feedback", json=rating).status_code == 200
        assert other.get("/v1/dashboard/feedback").status_code == 200
        # the flooder's feedback, reads and chat with an unknown key are refused alike
        assert _refused(flood.post("/v1/feedback", json=rating))
        assert _refused(flood.get("/v1/dashboard/routing"))
        assert _refused(flood.get("/v1/models")) and _refused(flood.get("/metrics"))
        assert _refused(flood.post("/v1/chat/completions", json=BODY, headers=_bearer("sk-x")))
        assert flood.get("/healthz").status_code == 200  # probes are never limited
        # a header the flooder writes itself changes nothing
        spoofed = {"X-Forwarded-For": "198.51.100.7"}
        assert _refused(flood.post("/v1/chat/completions", json=BODY, headers=spoofed))

        # keyed traffic from the same address: its key's limits, not the address's
        for _ in range(5):
            resp = flood.post("/v1/chat/completions", json=BODY, headers=_bearer(STEADY))
            assert resp.status_code == 200, resp.text
        metered = [
            flood.post("/v1/chat/completions", json=BODY, headers=_bearer(METERED))
            for _ in range(KEY_RPM + 1)
        ]
        assert [r.status_code for r in metered[:KEY_RPM]] == [200] * KEY_RPM
        assert _refused(metered[-1], "requests_per_minute")

        # behind a trusted proxy, X-Forwarded-For names the client: the rightmost hop
        # the proxy did not add itself
        # the client wrote the first entry itself; the proxy appended the address it saw
        behind = {"X-Forwarded-For": f"{OTHER}, 198.51.100.8"}
        assert proxy.post("/v1/chat/completions", json=BODY, headers=behind).status_code == 200
        relayed = {"X-Forwarded-For": FLOODER}
        assert _refused(proxy.post("/v1/chat/completions", json=BODY, headers=relayed))

        clock.now += 60.0 / PER_MINUTE  # a bucket refills: one more request a 2 s
        assert flood.post("/v1/chat/completions", json=BODY).status_code == 200
        assert _refused(flood.post("/v1/chat/completions", json=BODY))


def test_without_the_limit_anonymous_traffic_is_not_counted(engine):
    cfg = config(auth={"open_chat": True})
    admission = Admission(cfg, engine)
    assert admission.addresses.per_minute is None
    for _ in range(1000):
        admission.addresses.take("127.0.0.2")
    assert len(admission.addresses) == 0


def test_client_addresses():
    plain = ClientAddresses(())
    assert plain.client("203.0.113.9", "198.51.100.1") == "203.0.113.9"  # nobody trusted
    proxied = ClientAddresses(("10.0.0.0/8", "2001:db8:ffff::1"))
    assert proxied.client("10.1.2.3", "198.51.100.1") == "198.51.100.1"
    assert proxied.client("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9") == "198.51.100.1"
    assert proxied.client("10.1.2.3", "10.2.2.2, 10.3.3.3") == "10.2.2.2"  # all trusted
    assert proxied.client("10.1.2.3", "not-an-ip, 10.3.3.3") == "10.3.3.3"
    assert proxied.client("10.1.2.3", "") == "10.1.2.3"
    assert proxied.client("203.0.113.9", "198.51.100.1") == "203.0.113.9"  # not a proxy
    # IPv6 clients count by /64; IPv4-mapped ones as IPv4
    assert plain.client("2001:db8:1:2:aaaa::1", None) == "2001:db8:1:2::/64"
    assert plain.client("2001:db8:1:2:bbbb::9", None) == "2001:db8:1:2::/64"
    assert plain.client("::ffff:192.0.2.1", None) == "192.0.2.1"
    assert proxied.client("2001:db8:ffff::1", "2001:db8:5::7") == "2001:db8:5::/64"
    assert ClientAddresses((), 128).client("2001:db8::1", None) == "2001:db8::1"
    assert plain.client("testclient", None) == "testclient"
    assert plain.client(None, None) == "unknown"


def test_the_limiter_keeps_a_bounded_number_of_addresses():
    clock = Clock()
    limiter = AddressLimiter(2, clock, max_addresses=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    limiter.take("192.0.2.1")
    limiter.take("192.0.2.1")
    with pytest.raises(LimitExceeded) as refused:
        limiter.take("192.0.2.1")
    assert refused.value.retry_after == 30  # one request in 60 / 2 s
    clock.now += 30
    limiter.take("192.0.2.1")


def test_trusted_proxies_must_be_addresses_or_networks():
    ok = config(limits={"trusted_proxies": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]})
    assert ok.limits.trusted_proxies == ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32")
    for bad in (["lb.internal"], ["10.0.0.0/33"]):
        with pytest.raises(ConfigError, match="trusted_proxies"):
            config(limits={"trusted_proxies": bad})
    with pytest.raises(ConfigError, match="anonymous_requests_per_minute"):
        config(limits={"anonymous_requests_per_minute": 0})
