"""The judge through an OpenAI-compatible endpoint, against a real HTTP server started in the test (http.server in a thread)
that answers with canned chat completions: the one place a fake judge stands in, the endpoint being external."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from nncift.downstream.judge import EndpointJudge, JudgeError, JudgeSettings, judge_answers
from nncift.settings.fields import settings_dict

QUESTIONS = ["Name the capital of France.", "Name the capital of Italy.", "Name the capital of Spain."]
REFERENCES = ["Paris", "Rome", "Madrid"]
ANSWERS = ["Paris", "Lyon", "Barcelona"]
REPLIES = {"Paris": "5", "Lyon": "Score: 2", "Barcelona": "I cannot tell."}
"""The canned judgement per candidate answer: a digit, the documented ``Score: N`` form, and one that does not parse."""


class Server:
    """A chat-completions server on a free local port: records each request; answers per candidate (or fails with ``status``)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
                candidate = body["messages"][0]["content"].split("Candidate answer:\n")[1].split("\n")[0]
                payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLIES[candidate]}, "finish_reason": "stop"}]}
                data = json.dumps(payload if owner.status == 200 else {"error": {"message": "overloaded"}}).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture()
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


def _settings(server: Server, **extra: object) -> JudgeSettings:
    return JudgeSettings(**{"mode": "generate", "endpoint": server.url, "model": "judge-model", "batch_size": 2, **extra})  # type: ignore[arg-type]


def test_endpoint_scores_counts_unparseable_and_sends_the_key(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sekrit-123")
    settings = _settings(server, api_key_env="JUDGE_KEY", max_new_tokens=5)
    outcome = judge_answers(QUESTIONS, REFERENCES, ANSWERS, settings, judge=EndpointJudge(settings), cache=tmp_path / "judgements.jsonl")
    assert outcome.scores == [5, 2, None] and outcome.outputs == ["5", "Score: 2", "I cannot tell."]
    metrics = outcome.metrics()
    assert metrics["judge_score"] == pytest.approx(3.5)
    assert metrics["judge_unparseable"] == 1 and metrics["judge_unparseable_share"] == pytest.approx(1 / 3)
    assert len(server.requests) == 3
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions" and request["authorization"] == "Bearer sekrit-123"
        assert request["body"]["temperature"] == 0 and request["body"]["max_tokens"] == 5 and request["body"]["model"] == "judge-model"
    stored = (tmp_path / "judgements.jsonl").read_text() + json.dumps(settings_dict(settings)) + json.dumps(metrics)
    assert "sekrit" not in stored and "JUDGE_KEY" in json.dumps(settings_dict(settings))  # the variable's name, never the key


def test_a_second_run_sends_no_request(server: Server, tmp_path: Path) -> None:
    settings = _settings(server)
    first = judge_answers(QUESTIONS, REFERENCES, ANSWERS, settings, judge=EndpointJudge(settings), cache=tmp_path / "c.jsonl")
    assert server.requests and all(r["authorization"] is None for r in server.requests)  # no key asked for: none sent
    sent = len(server.requests)
    again = EndpointJudge(settings)
    second = judge_answers(QUESTIONS, REFERENCES, ANSWERS, settings, judge=again, cache=tmp_path / "c.jsonl")
    assert len(server.requests) == sent and again.calls == 0 and second.reused == 3 and second.scores == first.scores
    other_model = _settings(server, model="another-judge")  # another judge: nothing reused
    third = judge_answers(QUESTIONS, REFERENCES, ANSWERS, other_model, judge=EndpointJudge(other_model), cache=tmp_path / "c.jsonl")
    assert third.reused == 0 and len(server.requests) == 2 * sent


def test_a_full_chat_completions_url_is_used_as_it_is(server: Server, tmp_path: Path) -> None:
    settings = _settings(server, endpoint=server.url + "/chat/completions/")
    judge_answers(QUESTIONS[:1], REFERENCES[:1], ANSWERS[:1], settings, judge=EndpointJudge(settings), cache=tmp_path / "c.jsonl")
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_endpoint_failures_are_one_line_errors(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    settings = _settings(server, api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(JudgeError, match="the environment variable NO_SUCH_JUDGE_KEY is not set"):
        judge_answers(QUESTIONS, REFERENCES, ANSWERS, settings, judge=EndpointJudge(settings), cache=tmp_path / "c.jsonl")
    server.status = 503
    with pytest.raises(JudgeError, match=r"judge endpoint http://127\.0\.0\.1:\d+/v1/chat/completions: HTTP 503 .*overloaded"):
        judge_answers(QUESTIONS, REFERENCES, ANSWERS, _settings(server), judge=EndpointJudge(_settings(server)), cache=tmp_path / "c.jsonl")
    assert not (tmp_path / "c.jsonl").exists()  # nothing judged, nothing stored
    port = server.httpd.server_address[1]
    server.close()
    gone = _settings(server, endpoint=f"http://127.0.0.1:{port}/v1", timeout=5.0)
    with pytest.raises(JudgeError, match="cannot reach it"):
        judge_answers(QUESTIONS, REFERENCES, ANSWERS, gone, judge=EndpointJudge(gone), cache=tmp_path / "c.jsonl")
