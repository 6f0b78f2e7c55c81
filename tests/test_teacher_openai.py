"""The openai backend against a real HTTP server on loopback, scripted by each test."""

from __future__ import annotations

import json

import pytest
from loopback_server import Reply, ScriptedServer, last_query

from dsbs_jax.data.cards import load_card
from dsbs_jax.data.sources import record_from_fields
from dsbs_jax.errors import UserError
from dsbs_jax.records import NO_ANSWER, NO_TEACHER, OK
from dsbs_jax.teacher.backends.base import Request, SamplingParams
from dsbs_jax.teacher.backends.openai import OpenAIBackend, parse_retry_after
from dsbs_jax.teacher.extract import extract

SVAMP = load_card("svamp")


def inputs(n: int, start: int = 0):
    return [
        record_from_fields(
            SVAMP,
            {
                "input": f"Ann has {i} pens and buys 2 more.\nHow many pens?",
                "label": f"( {i} + 2 )",
            },
            f"q{i}",
            "test",
            None,
        )
        for i in range(start, start + n)
    ]


def good(query: str) -> str:
    """A right answer, in PaLM's style, running on into the next few-shot item."""
    i = query.split("has ", 1)[1].split(" ", 1)[0]
    return f"Ann has {i} pens and buys 2. So {i} + 2. The answer is ({i} + 2).\n\nQ: Bob has"


def backend(server: ScriptedServer, **kw) -> OpenAIBackend:
    opts = dict(model="m", endpoint="completions", concurrency=2, timeout=5.0)
    opts |= dict(max_retries=3, retry_base_delay=0.01, retry_max_delay=0.05)
    opts |= kw
    return OpenAIBackend(server.base_url, **opts)


def run(server, tmp_path, n=2, params=None, sc=False, **kw):
    params = params or SamplingParams(max_tokens=64, stop=("Q:",))
    return extract(
        SVAMP,
        inputs(n),
        backend(server, **kw),
        params,
        tmp_path / "out.jsonl",
        tmp_path / "cache",
        self_consistency=sc,
        progress=False,
    )


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_endpoints_send_openai_shapes(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-abc")
    with ScriptedServer(lambda body, path, seen: good(last_query(body))) as server:
        records, stats = run(server, tmp_path, endpoint=endpoint, api_key_env="TEST_KEY")
    assert [r.status for r in records] == [OK, OK]
    assert [r.teacher_label for r in records] == ["(0 + 2)", "(1 + 2)"]
    assert stats.correct == 2 and stats.teacher_accuracy == 100.0
    req = server.log[0]
    assert req.path == f"/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}"
    assert req.authorization == "Bearer sk-abc"
    assert req.body["model"] == "m" and req.body["max_tokens"] == 64
    assert req.body["stop"] == ["Q:"] and req.body["n"] == 1 and req.body["temperature"] == 0.0
    if endpoint == "chat":
        assert req.body["messages"][0]["role"] == "user"
        assert req.body["messages"][0]["content"].endswith("How many pens?\nA:")
    else:
        assert req.body["prompt"].startswith("Q: Tom has 12 marbles")
    assert stats.prompt_tokens > 0 and stats.completion_tokens > 0


def test_429_honours_retry_after(tmp_path):
    def answer(body, path, seen):
        if seen == 0:
            return Reply(status=429, headers={"Retry-After": "1"})
        return good(last_query(body))

    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=1)
    assert records[0].status == OK and stats.retries == 1
    first, second = server.log
    assert second.time - first.time >= 0.9  # the base delay alone is at most 0.05 s


def test_5xx_retried_then_answered(tmp_path):
    def answer(body, path, seen):
        return Reply(status=500 + seen) if seen < 3 else good(last_query(body))

    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=1)
    assert records[0].status == OK
    assert len(server.log) == 4 and stats.retries == 3


def test_5xx_forever_gives_up_and_run_goes_on(tmp_path):
    def answer(body, path, seen):
        return Reply(status=503) if "has 0 " in last_query(body) else good(last_query(body))

    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=2, max_retries=2)
    assert [r.status for r in records] == [NO_TEACHER, OK]
    assert stats.failed == 1 and stats.requested == 1
    assert sum("has 0 " in last_query(x.body) for x in server.log) == 3  # 1 + 2 retries
    # a rerun asks again only for the input that failed
    with ScriptedServer(lambda body, path, seen: good(last_query(body))) as server:
        records, stats = run(server, tmp_path, n=2)
    assert [r.status for r in records] == [OK, OK]
    assert len(server.log) == 1 and stats.from_cache == 1


def test_hanging_request_times_out_and_is_retried(tmp_path):
    def answer(body, path, seen):
        return Reply(hang=3.0) if seen == 0 else good(last_query(body))

    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=1, timeout=0.5)
    assert records[0].status == OK and stats.retries == 1
    assert 0.5 <= server.log[1].time - server.log[0].time < 3.0


def test_malformed_json_is_retried_or_recorded(tmp_path):
    def answer(body, path, seen):
        if "has 1 " in last_query(body):
            return Reply(raw_body=b'{"choices": [{"text": "The ans')  # always cut off
        if seen == 0:
            return Reply(raw_body=b"<html>bad gateway</html>")
        if seen == 1:
            return Reply(raw_body=b'{"choices": [{"index": 0}]}')  # no text
        return good(last_query(body))

    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=2, max_retries=2)
    assert [r.status for r in records] == [OK, NO_TEACHER]
    assert stats.failed == 1


def test_a_response_far_over_max_tokens_is_cut_off_not_kept(tmp_path):
    """A server that ignores max_tokens (60 MB for 64 tokens asked) fills neither memory nor
    the cache: the request fails at the limit, once (not retried), and the run goes on."""
    from dsbs_jax.teacher.backends.openai import response_limit

    params = SamplingParams(max_tokens=64, stop=("Q:",))
    huge = "x" * (response_limit(params) + 10)

    def answer(body, path, seen):
        if "has 0 " in last_query(body):
            return Reply(texts=[huge])
        return good(last_query(body))

    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=2, params=params)
        asked_for_0 = sum("has 0 " in last_query(x.body) for x in server.log)
    assert [r.status for r in records] == [NO_TEACHER, OK]
    assert stats.failed == 1 and asked_for_0 == 1
    cache = (tmp_path / "cache" / "requests.jsonl").read_text()
    assert len(cache) < 10_000 and "xxxx" not in cache


def test_truncated_answer_is_recorded_with_its_parse_status(tmp_path):
    def answer(body, path, seen):
        if "has 0 " in last_query(body):
            return Reply(texts=["Ann has 0 pens and then she"], finish_reason="length")
        return Reply(texts=[good(last_query(body))], finish_reason="length")

    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=2)
    assert [r.status for r in records] == [NO_ANSWER, OK]  # the second ran past its answer
    assert records[0].raw == "Ann has 0 pens and then she"
    assert stats.truncated == 2 and stats.failed == 0


def test_n_samples_and_self_consistency(tmp_path):
    labels = ["(3 + 2)", "(1 + 2)", "( 1.0 + 2.0 )", "(2 * 1.5)", "(7)"]

    def answer(body, path, seen):
        assert body["n"] == 5 and body["temperature"] == 0.7
        return [f"Reason {k}. The answer is {lab}." for k, lab in enumerate(labels)]

    params = SamplingParams(temperature=0.7, max_tokens=64, stop=("Q:",), n=5)
    with ScriptedServer(answer) as server:
        records, stats = run(server, tmp_path, n=1, params=params, sc=True)
    # value 3 has three votes ((1 + 2), ( 1.0 + 2.0 ), (2 * 1.5)); the first of them is kept
    assert records[0].teacher_label == "(1 + 2)" and records[0].rationale == "Reason 1."
    assert stats.sc_agreement == pytest.approx(0.6)


def test_server_that_ignores_n_is_asked_again(tmp_path):
    def answer(body, path, seen):
        return [f"Try {seen}. The answer is ({seen} + 2)."]  # one choice, whatever n says

    params = SamplingParams(temperature=0.7, max_tokens=64, n=3)
    with ScriptedServer(answer) as server:
        c = backend(server).complete(Request(0, "a", {}, "Q: x\nA:"), params)
    assert c.texts == [f"Try {k}. The answer is ({k} + 2)." for k in range(3)]
    assert [x.body["n"] for x in server.log] == [3, 2, 1]


def test_client_errors_stop_the_run_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-secret-123")

    def answer(body, path, seen):
        msg = {"error": {"message": "Incorrect API key provided: sk-secret-123"}}
        return Reply(status=401, raw_body=json.dumps(msg).encode())

    with ScriptedServer(answer) as server:
        with pytest.raises(UserError) as e:
            run(server, tmp_path, n=1, api_key_env="TEST_KEY")
    assert "401" in str(e.value) and "--api_key_env" in str(e.value)
    assert "sk-secret-123" not in str(e.value)
    assert len(server.log) == 1  # not retried


def test_retry_after_forms():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
