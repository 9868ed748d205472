"""The gateway as the official ``openai`` client sees it, against a fake upstream.

Real HTTP on both sides: the client talks to the gateway's FastAPI app (uvicorn on a
loopback port), whose openai backend talks to :mod:`tests.compat.fake_upstream`
through ``openai.AsyncOpenAI``; decisions and outcomes land in the real Postgres.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.compat.conftest import JOULES, PRICE_IN, PRICE_OUT, Gateway
from tests.compat.fake_upstream import FakeUpstream, plan

ASK = [{"role": "user", "content": "what is the weather in Paris today"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },  # fmt: skip
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def _expected(model: str, messages: list[dict[str, Any]] = ASK, **body: Any) -> Any:
    return plan({"model": model, "messages": messages, **body})


def _stream(client: openai.OpenAI, **kw: Any) -> list[Any]:
    return list(client.chat.completions.create(stream=True, **kw))


@pytest.mark.usefixtures("fake")
def test_a_plain_answer_with_usage_finish_reason_and_priced_outcome(gateway: Gateway):
    client = gateway.client()
    completion = client.chat.completions.create(model="up-a", messages=ASK)
    choices, usage = _expected("model-a")
    [choice] = completion.choices
    assert choice.message.content == "".join(choices[0]["words"])
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"])  # fmt: skip
    assert completion.usage.total_tokens == usage["total_tokens"]
    assert completion.model == "up-a" and completion.id.startswith("chatcmpl-")
    meta = completion.model_extra["banditctl"]
    row = gateway.outcome(meta["request_id"])
    assert row["status"] == "ok" and row["arm_id"] == "up-a"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])  # fmt: skip
    pt, ct = usage["prompt_tokens"], usage["completion_tokens"]
    assert row["cost_usd"] == pytest.approx((pt * PRICE_IN + ct * PRICE_OUT) / 1000)
    assert row["energy_j"] == pytest.approx(JOULES * (pt + ct))
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]


def test_a_tool_calling_round_trip(gateway: Gateway, fake: FakeUpstream):
    client = gateway.client()
    first = client.chat.completions.create(
        model="upstreams", messages=ASK, tools=[WEATHER, CLOCK], tool_choice="auto"
    )
    [choice] = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"query": ASK[0]["content"]}
    # the tools went upstream as the client sent them
    assert fake.requests[-1]["tools"] == [WEATHER, CLOCK]
    assert fake.requests[-1]["tool_choice"] == "auto"

    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = client.chat.completions.create(model="upstreams", messages=history, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content.endswith("heard: sunny, 21 C")
    sent = fake.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[2]["role"] == "tool"
    assert sent[2]["tool_call_id"] == call.id


def test_a_named_tool_choice_and_a_streamed_tool_call(gateway: Gateway, fake: FakeUpstream):
    client = gateway.client()
    choice = {"type": "function", "function": {"name": "get_time"}}
    whole = client.chat.completions.create(
        model="up-b", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=choice
    )
    assert whole.choices[0].message.tool_calls[0].function.name == "get_time"
    assert fake.requests[-1]["tool_choice"] == choice

    chunks = _stream(client, model="up-b", messages=ASK, tools=[WEATHER, CLOCK],
                     tool_choice=choice, stream_options={"include_usage": True})  # fmt: skip
    calls: dict[int, dict[str, Any]] = {}
    finishes = []
    pieces = 0
    for chunk in chunks:
        for c in chunk.choices:
            finishes += [c.finish_reason] if c.finish_reason else []
            for d in c.delta.tool_calls or ():
                pieces += 1
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = d.id or call["id"]
                call["name"] += d.function.name or "" if d.function else ""
                call["arguments"] += d.function.arguments or "" if d.function else ""
    assert pieces >= 3  # streamed as the upstream sent it, not one whole call
    expected = whole.choices[0].message.tool_calls[0]
    assert calls == {0: {"id": expected.id, "name": "get_time", "arguments": expected.function.arguments}}  # fmt: skip
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_n_choices_stop_and_max_tokens(gateway: Gateway, fake: FakeUpstream):
    client = gateway.client()
    three = client.chat.completions.create(model="up-a", messages=ASK, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.message.content for c in three.choices}) == 1
    choices, usage = _expected("model-a", n=3)
    assert three.usage.completion_tokens == usage["completion_tokens"]

    stopped = client.chat.completions.create(model="up-a", messages=ASK, stop=["Paris"])
    assert stopped.choices[0].message.content == "model-a heard: what is the weather in "
    assert stopped.choices[0].finish_reason == "stop"
    assert fake.requests[-1]["stop"] == ["Paris"]

    short = client.chat.completions.create(model="up-a", messages=ASK, max_completion_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == "model-a heard: what"
    assert fake.requests[-1]["max_completion_tokens"] == 3
    legacy = client.chat.completions.create(model="up-a", messages=ASK, max_tokens=2)
    assert legacy.choices[0].finish_reason == "length" and legacy.usage.completion_tokens == 2

    streamed = _stream(client, model="up-a", messages=ASK, n=2, max_tokens=4)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert texts == {0: "model-a heard: what is", 1: "model-a heard: what is"}
    assert finish == {0: "length", 1: "length"}
    assert all(c.usage is None for c in streamed)  # no include_usage: no usage chunk


def test_streaming_forwards_chunks_as_they_come_with_usage_last(gateway: Gateway, fake):
    fake.delay_s = 0.15
    client = gateway.client()
    start = time.perf_counter()
    arrivals: list[float] = []
    text = ""
    chunks = []
    stream = client.chat.completions.create(
        model="up-a", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - start)
            text += chunk.choices[0].delta.content
    choices, usage = _expected("model-a")
    assert text == "".join(choices[0]["words"])
    words = len(choices[0]["words"])
    # the first words arrive while the upstream is still producing the rest
    assert arrivals[0] < arrivals[-1] - 0.15 * (words - 3)
    assert chunks[0].model_extra["banditctl"]["arm"] == "up-a"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == usage["total_tokens"]
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    row = gateway.outcome(chunks[0].model_extra["banditctl"]["request_id"])
    # time to first token measured at the gateway: one delay, not the whole answer
    assert row["status"] == "ok" and row["error"] is None
    assert 100 <= row["ttft_ms"] < row["latency_ms"] - 100 * (words - 2)
    assert row["completion_tokens"] == usage["completion_tokens"]


def test_unknown_fields_reach_the_upstream_untouched(gateway: Gateway, fake: FakeUpstream):
    client = gateway.client()
    extra = {"top_k": 7, "repetition_penalty": 1.1, "guided_json": {"type": "object"},
             "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    client.chat.completions.create(
        model="up-a", messages=ASK, temperature=0.3, seed=11, user="u-1", logit_bias={"42": -5},
        response_format=fmt, presence_penalty=0.5, extra_body={**extra, "metadata": {"task": "chat"}},
    )  # fmt: skip
    sent = fake.requests[-1]
    for k, v in {**extra, "temperature": 0.3, "seed": 11, "user": "u-1",
                 "logit_bias": {"42": -5}, "response_format": fmt, "presence_penalty": 0.5}.items():  # fmt: skip
        assert sent[k] == v, k
    assert sent["model"] == "model-a" and sent["messages"] == ASK
    assert "metadata" not in sent  # the gateway's own labels stay with the gateway
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    as_json = client.chat.completions.create(
        model="up-a", messages=ASK, response_format={"type": "json_object"}
    )
    assert json.loads(as_json.choices[0].message.content)["answer"].startswith("model-a heard")


def test_log_probabilities_pass_through_plain_and_streamed(gateway: Gateway, fake):
    client = gateway.client()
    whole = client.chat.completions.create(model="up-a", messages=ASK, logprobs=True)
    tokens = whole.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == whole.choices[0].message.content
    assert tokens[0].logprob == pytest.approx(-0.1 * len(tokens[0].token))
    assert fake.requests[-1]["logprobs"] is True
    streamed = _stream(client, model="up-a", messages=ASK, logprobs=True, top_logprobs=2)
    per_chunk = [
        c.choices[0].logprobs.content for c in streamed if c.choices and c.choices[0].logprobs
    ]
    assert "".join(t.token for lp in per_chunk for t in lp) == whole.choices[0].message.content
    assert fake.requests[-1]["top_logprobs"] == 2
    plain = client.chat.completions.create(model="up-a", messages=ASK)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_completion_tokens": "ten"}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
        ),  # fmt: skip
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.name"),
    ],
)
def test_bad_fields_are_400_naming_the_field_and_log_nothing(gateway: Gateway, fake, body, param):
    before = gateway.count("decisions")
    r = httpx.post(f"{gateway.api_url}/chat/completions",
                   json={"model": "up-a", "messages": ASK, **body}, timeout=10)  # fmt: skip
    assert r.status_code == 400, r.text
    assert (
        r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    )
    assert gateway.count("decisions") == before and fake.requests == []


@pytest.mark.usefixtures("fake")
def test_the_replay_backend_serves_what_it_can_and_refuses_the_rest(gateway: Gateway):
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="small", messages=ASK, tools=[WEATHER])
    assert refused.value.status_code == 400 and refused.value.body["param"] == "tools"
    assert "replay backend cannot call tools" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="small", messages=ASK,
                                       response_format={"type": "json_object"})  # fmt: skip
    assert refused.value.body["param"] == "response_format"
    # auto routes a tool request only to the arms that can call tools
    for _ in range(6):
        r = client.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER])
        assert r.model in {"up-a", "up-b", "up-slow"}

    whole = client.chat.completions.create(model="small", messages=ASK)
    full = whole.choices[0].message.content
    two = client.chat.completions.create(model="small", messages=ASK, n=2, max_tokens=2)
    assert [c.finish_reason for c in two.choices] == ["length", "length"]
    assert two.choices[0].message.content == two.choices[1].message.content == full[:8]
    assert two.usage.completion_tokens == 4
    word = full.split()[1]
    cut = client.chat.completions.create(model="small", messages=ASK, stop=[word])
    assert cut.choices[0].message.content == full[: full.index(word)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = _stream(client, model="small", messages=ASK, max_tokens=2,
                       stream_options={"include_usage": True})  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[:8]
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "length"
    assert streamed[-1].usage.completion_tokens == 2


def test_an_upstream_that_rejects_a_field_is_a_4xx_naming_it(gateway: Gateway, fake):
    fake.reject = {"message": "this model cannot call tools", "param": "tools"}
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="up-a", messages=ASK, tools=[WEATHER])
    assert refused.value.body["param"] == "tools"
    assert "this model cannot call tools" in refused.value.message
    with pytest.raises(openai.BadRequestError):  # streamed: refused before any chunk
        _stream(client, model="up-a", messages=ASK, tools=[WEATHER])
    rows = gateway.rows("SELECT o.status FROM outcomes o JOIN decisions d USING (request_id) "
                        "ORDER BY d.created_at DESC LIMIT 2")  # fmt: skip
    assert [r["status"] for r in rows] == ["error", "error"]


def test_the_client_retries_a_failing_upstream_then_a_dead_one_is_a_502(gateway: Gateway, fake):
    client = gateway.client()
    fake.fail_times, fake.fail_status = 1, 503
    ok = client.chat.completions.create(model="up-a", messages=ASK)
    assert ok.choices[0].message.content and len(fake.requests) == 2  # retried once
    fake.fail_times = 10
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="up-a", messages=ASK)
    assert failed.value.status_code == 502 and failed.value.body["type"] == "upstream_error"
    assert len(fake.requests) == 4  # arm max_retries 1: two attempts
    # the 502 names its decision, which has its error outcome
    rid = failed.value.response.headers["x-banditctl-request-id"]
    [row] = gateway.rows("SELECT status FROM outcomes WHERE request_id = :rid", rid=rid)
    assert row["status"] == "error"


def test_an_upstream_timeout_is_logged_as_a_timeout(gateway: Gateway, fake):
    fake.first_delay_s = 1.5  # the up-slow arm waits 0.5 s
    client = gateway.client()
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="up-slow", messages=ASK)
    assert failed.value.status_code == 502
    [row] = gateway.rows("SELECT o.status, o.error FROM outcomes o JOIN decisions d "
                         "USING (request_id) WHERE d.arm_id = 'up-slow' "
                         "ORDER BY d.created_at DESC LIMIT 1")  # fmt: skip
    assert row["status"] == "timeout" and "0.5 s" in row["error"]


def test_an_upstream_failing_mid_stream_ends_the_stream_with_an_error(gateway: Gateway, fake):
    fake.fail_after = 2
    client = gateway.client()
    got = []
    with pytest.raises(openai.APIError, match="broke mid-stream"):
        for chunk in client.chat.completions.create(model="up-a", messages=ASK, stream=True):
            got.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "model-a heard:"
    rid = got[0].model_extra["banditctl"]["request_id"]
    row = gateway.outcome(rid)
    assert row["status"] == "error" and "mid-stream" in row["error"]


def test_a_client_that_disconnects_stops_the_generation(gateway: Gateway, fake: FakeUpstream):
    fake.delay_s = 0.1
    long_ask = [{"role": "user", "content": " ".join(["word"] * 200)}]
    body = {"model": "up-a", "messages": long_ask, "stream": True}
    url = f"{gateway.api_url}/chat/completions"
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
        seen = [next(lines) for _ in range(6)]
    assert seen and first["banditctl"]["arm"] == "up-a"
    deadline = time.monotonic() + 10
    while fake.closed_early < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.closed_early == 1 and fake.completed == 0  # the upstream was told to stop
    while time.monotonic() < deadline:
        rows = gateway.rows("SELECT o.* FROM outcomes o WHERE request_id = :r",
                            r=first["banditctl"]["request_id"])  # fmt: skip
        if rows:
            break
        time.sleep(0.05)
    [row] = rows
    assert row["status"] == "ok" and row["error"].startswith("client disconnected")
    assert 0 < row["completion_tokens"] < 200 and row["latency_ms"] < 10_000
