"""The on-disk request cache: the teacher's answers, keyed by prompt, model and sampling params.

An append-only JSON-lines file, one answer per line, flushed as each arrives, so a run killed at
any moment keeps every answer it received; a half-written last line (the kill came mid-write) is
cut off when the cache is opened again. A lock file stops two runs from writing one cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from typing import Any

from dsbs_jax.errors import UserError

CACHE_FILE = "requests.jsonl"


def request_key(prompt: str, model: str, endpoint: str, params: dict[str, Any]) -> str:
    """sha256 over the prompt, the model, the endpoint and the sampling parameters."""
    blob = json.dumps(
        {"prompt": prompt, "model": model, "endpoint": endpoint, "params": params},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RequestCache:
    """A key -> answer map backed by `<dir>/requests.jsonl`."""

    def __init__(self, directory: os.PathLike | str):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, CACHE_FILE)
        self._lock_file = open(os.path.join(directory, "lock"), "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise UserError(f"{directory}: another `dsbs teach` is using this cache") from None
        self._entries: dict[str, dict[str, Any]] = {}
        self.skipped = 0
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a kill: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                self._entries[obj["key"]] = obj["value"]
            except (ValueError, KeyError, TypeError):
                self.skipped += 1

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer for key, or None."""
        return self._entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Stores an answer and flushes it to the file."""
        self._entries[key] = value
        self._file.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Closes the file and releases the lock."""
        self._file.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
