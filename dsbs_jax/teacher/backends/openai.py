"""A teacher behind any OpenAI-compatible HTTP server (vLLM, TGI, Ollama, hosted APIs).

Standard library only (http.client, one keep-alive connection per worker thread). Both the chat
(`/chat/completions`) and the completion (`/completions`) endpoints, relative to `base_url` as in
the OpenAI client (e.g. `http://localhost:8000/v1`). Transient failures (429, 408, 5xx, timeouts,
dropped connections, malformed or incomplete JSON) are retried with exponential backoff and full
jitter, and a `Retry-After` header (seconds or an HTTP date) is honoured. Other 4xx answers stop
the run with the server's message. The API key comes from an environment variable; it is sent
only in the Authorization header and is removed from every message this module produces.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
from typing import Any

from dsbs_jax.errors import UserError
from dsbs_jax.teacher.backends.base import Completion, Request, RequestFailed, SamplingParams

log = logging.getLogger(__name__)

ENDPOINTS = {"chat": "chat/completions", "completions": "completions"}
RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER = 600.0


def response_limit(params: SamplingParams) -> int:
    """The most bytes a response may have: 64 KiB of JSON around the texts, plus 64 bytes per
    token asked for (a token is a few bytes of text, escaped at most 6x in JSON). A server that
    sends more (ignoring max_tokens, or broken) is cut off: nothing unbounded reaches memory or
    the cache."""
    return 65536 + max(params.n, 1) * max(params.max_tokens, 1) * 64


class _TooLarge(Exception):
    """A response past `response_limit`: not retried, the server would do it again."""


class _Transient(Exception):
    """A failure worth retrying; `retry_after` is the server's wish in seconds, if it said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(when - (time.time() if now is None else now), 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


class OpenAIBackend:
    """Chat or completion requests to an OpenAI-compatible server, with retries and a timeout."""

    name = "openai"
    cacheable = True

    def __init__(
        self,
        base_url: str,
        model: str,
        endpoint: str = "chat",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 6,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        seed: int = 0,
    ):
        if endpoint not in ENDPOINTS:
            raise UserError(f"--endpoint {endpoint!r}: expected one of {', '.join(ENDPOINTS)}")
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(f"--base_url {base_url!r}: expected http(s)://host[:port]/path")
        if not model:
            raise UserError("--model: required with --backend openai")
        if concurrency < 1:
            raise UserError(f"--concurrency {concurrency}: must be at least 1")
        self.model = model
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port
        self._path = url.path.rstrip("/") + "/" + ENDPOINTS[endpoint]
        self._key = os.environ.get(api_key_env) or None
        self._local = threading.local()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.retries = 0
        self._connections: list[http.client.HTTPConnection] = []

    # -- plumbing ---------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def body(self, prompt: str, params: SamplingParams, n: int) -> dict[str, Any]:
        """The JSON request body for one prompt."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "n": n,
        }
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _post(self, payload: bytes, limit: int) -> tuple[int, dict[str, str], bytes]:
        for fresh in (False, True):
            conn = self._connection()
            reused = getattr(conn, "sock", None) is not None
            try:
                if not reused:
                    conn.connect()
                    # headers and body go out in two writes: without this, Nagle's algorithm and
                    # the server's delayed ACK can stall every request by ~40 ms
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request("POST", self._path, body=payload, headers=self._headers())
                resp = conn.getresponse()
                data = resp.read(limit + 1)
                if len(data) > limit:
                    self._drop_connection()
                    raise _TooLarge(
                        f"response over {limit} bytes for max_tokens and n asked; cut off"
                    )
                headers = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    self._drop_connection()
                return resp.status, headers, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop_connection()
                if reused and not fresh:
                    continue  # the server closed an idle keep-alive connection: reconnect once
                raise _Transient(f"connection dropped: {type(e).__name__}") from None
            except TimeoutError:
                self._drop_connection()
                raise _Transient(f"no answer within --timeout {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop_connection()
                raise _Transient(f"{type(e).__name__}: {e}") from None
        raise _Transient("connection dropped twice")  # pragma: no cover

    def _parse(self, status: int, headers: dict[str, str], data: bytes) -> Completion:
        if status != 200:
            text = self._redact(data[:300].decode("utf-8", "replace").strip())
            if status in RETRY_STATUSES:
                raise _Transient(
                    f"HTTP {status}: {text}", parse_retry_after(headers.get("retry-after"))
                )
            hint = " (check --api_key_env)" if status in (401, 403) else ""
            raise UserError(
                f"{self._scheme}://{self._host}{self._path}: HTTP {status}{hint}: {text}"
            )
        try:
            obj = json.loads(data)
            choices = sorted(obj["choices"], key=lambda c: c.get("index", 0))
            texts, reasons = [], []
            for c in choices:
                text = c["message"]["content"] if self.endpoint == "chat" else c["text"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
                texts.append(text)
                reasons.append(c.get("finish_reason"))
            usage = obj.get("usage") or {}
            return Completion(
                texts=texts,
                finish_reasons=reasons,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _Transient(f"malformed response ({type(e).__name__}: {e})") from None

    def _once(self, prompt: str, params: SamplingParams, n: int) -> Completion:
        payload = json.dumps(self.body(prompt, params, n)).encode("utf-8")
        limit = response_limit(dataclasses.replace(params, n=n))
        attempt = 0
        while True:
            try:
                try:
                    completion = self._parse(*self._post(payload, limit))
                except _TooLarge as e:
                    raise RequestFailed(str(e)) from None
                if not completion.texts:
                    raise _Transient("no choices in the response")
                completion.attempts = attempt + 1
                return completion
            except _Transient as e:
                if attempt >= self.max_retries:
                    raise RequestFailed(
                        f"gave up after {attempt + 1} attempts: {self._redact(str(e))}"
                    ) from None
                with self._lock:
                    delay = backoff_delay(
                        attempt, self.retry_base_delay, self.retry_max_delay, self._rng
                    )
                    self.retries += 1
                if e.retry_after is not None:
                    delay = max(delay, e.retry_after)
                log.warning(
                    "retry %d/%d in %.2f s: %s",
                    attempt + 1,
                    self.max_retries,
                    delay,
                    self._redact(str(e)),
                )
                time.sleep(delay)
                attempt += 1

    # -- the Backend interface --------------------------------------------------------------

    def complete(self, request: Request, params: SamplingParams) -> Completion:
        """Asks for params.n samples; a server that returns fewer is asked again for the rest."""
        total = self._once(request.prompt, params, params.n)
        rounds = 1
        while len(total.texts) < params.n and rounds < params.n:
            more = self._once(request.prompt, params, params.n - len(total.texts))
            total.texts += more.texts
            total.finish_reasons += more.finish_reasons
            total.prompt_tokens += more.prompt_tokens
            total.completion_tokens += more.completion_tokens
            total.attempts += more.attempts
            rounds += 1
        total.texts = total.texts[: params.n]
        total.finish_reasons = total.finish_reasons[: params.n]
        return total

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
