"""A scripted OpenAI-compatible server on 127.0.0.1 for teacher tests and the request benchmark.

`ScriptedServer(answer)` answers `POST <prefix>/chat/completions` and `<prefix>/completions` in the
OpenAI shapes. `answer(body, path, seen)` returns a `Reply` (or a list of texts, or one text);
`seen` counts earlier requests with the same prompt, so a test can script "fail twice, then
answer". Every request is logged (path, body, Authorization header, arrival time).
`hold_after(k)` answers k requests, then holds every later one until `release(abort=...)`.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Reply:
    """What the server does with one request."""

    texts: list[str] = dataclasses.field(default_factory=list)
    status: int = 200
    finish_reason: str = "stop"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    raw_body: bytes | None = None  # sent as is (e.g. malformed JSON)
    hang: float = 0.0  # seconds to wait before answering
    delay: float = 0.0  # seconds to wait before a normal answer


@dataclasses.dataclass
class Logged:
    path: str
    body: dict[str, Any]
    authorization: str | None
    time: float


def prompt_of(body: dict[str, Any]) -> str:
    """The prompt text of a chat or completion request body."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body["prompt"]


def last_query(body: dict[str, Any]) -> str:
    """The final (open) few-shot item of the prompt: the input being asked about."""
    return prompt_of(body).rsplit("\n\n", 1)[-1]


Answer = Callable[[dict[str, Any], str, int], "Reply | list[str] | str"]


class ScriptedServer:
    """An OpenAI-compatible HTTP server in a thread; use as a context manager."""

    def __init__(self, answer: Answer, prefix: str = "/v1"):
        self.answer = answer
        self.prefix = prefix
        self.log: list[Logged] = []
        self.answered: Counter[str] = Counter()  # prompt -> 200 answers fully sent
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._hold_after: int | None = None
        self._admitted = 0  # requests let through (not held)
        self._gate = threading.Event()
        self._abort = False
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release(abort=True)
        self._httpd.shutdown()
        self._httpd.server_close()

    def hold_after(self, k: int) -> None:
        """Answers k more requests, then holds the rest until release()."""
        with self._lock:
            self._hold_after = self._admitted + k
            self._gate.clear()

    def release(self, abort: bool = False) -> None:
        """Lets held requests go on; with abort, they are dropped unanswered."""
        self._abort = abort
        self._hold_after = None
        self._gate.set()

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as real servers do: no 40 ms delayed-ACK stalls

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                prompt = prompt_of(body)
                with server._lock:
                    server.log.append(
                        Logged(self.path, body, self.headers.get("Authorization"), time.time())
                    )
                    seen = server._seen[prompt]
                    server._seen[prompt] += 1
                    held = server._hold_after is not None and server._admitted >= server._hold_after
                    server._admitted += not held
                if held:
                    server._gate.wait()
                    if server._abort:
                        self.close_connection = True
                        return
                if self.path not in (
                    server.prefix + "/chat/completions",
                    server.prefix + "/completions",
                ):
                    self._send(404, b'{"error": {"message": "no such endpoint"}}')
                    return
                reply = server.answer(body, self.path, seen)
                if isinstance(reply, str):
                    reply = Reply(texts=[reply])
                elif isinstance(reply, list):
                    reply = Reply(texts=reply)
                if reply.hang:
                    time.sleep(reply.hang)
                    self.close_connection = True
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.raw_body is not None:
                    self._send(reply.status, reply.raw_body, reply.headers)
                    return
                if reply.status != 200:
                    err = json.dumps({"error": {"message": f"scripted {reply.status}"}})
                    self._send(reply.status, err.encode(), reply.headers)
                    return
                chat = self.path.endswith("/chat/completions")
                choices = []
                for i, text in enumerate(reply.texts):
                    choice: dict[str, Any] = {"index": i, "finish_reason": reply.finish_reason}
                    if chat:
                        choice["message"] = {"role": "assistant", "content": text}
                    else:
                        choice["text"] = text
                    choices.append(choice)
                out = {
                    "id": "cmpl-test",
                    "object": "chat.completion" if chat else "text_completion",
                    "model": body.get("model"),
                    "choices": choices,
                    "usage": {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": sum(len(t.split()) for t in reply.texts),
                    },
                }
                if self._send(200, json.dumps(out).encode(), reply.headers):
                    with server._lock:
                        server.answered[prompt] += 1

            def _send(
                self, status: int, data: bytes, headers: dict[str, str] | None = None
            ) -> bool:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except OSError:
                    return False

        return Handler
