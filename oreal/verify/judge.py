"""Optional LLM judge behind an OpenAI-compatible chat-completions endpoint.

Asked only about answers the rules rejected. It sees the question, the gold answer and the
*extracted* answer, never the whole response: a policy could write instructions to the judge.
Its reply must be exactly one of YES / NO (case and surrounding punctuation aside); anything
else counts as a failure, and a failure keeps the rule verdict.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

PROMPT = (
    "You check whether a student's final answer to a math problem is equivalent to the "
    "reference answer. Reply with exactly one word: YES or NO.\n\n"
    "Problem:\n{question}\n\nReference answer: {gold}\nStudent's final answer: {answer}"
)


@dataclass
class JudgeConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str = "EMPTY"
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5  # seconds, doubled at each retry
    concurrency: int = 8
    max_answer_chars: int = 400


class LLMJudge:
    def __init__(self, config: JudgeConfig):
        self.config = config
        self._slots = threading.Semaphore(config.concurrency)
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0

    def _request(self, prompt: str) -> str:
        cfg = self.config
        body = json.dumps({
            "model": cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": 4,
        }).encode()
        req = urllib.request.Request(
            cfg.base_url.rstrip("/") + "/chat/completions", data=body, method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {cfg.api_key}"},
        )
        with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        return data["choices"][0]["message"]["content"]

    @staticmethod
    def parse_verdict(text) -> bool | None:
        if not isinstance(text, str):
            return None
        word = text.strip().strip(".!*`'\" ").upper()
        return {"YES": True, "NO": False}.get(word)

    def judge(self, question: str, gold: str, answer: str) -> bool | None:
        """True/False from the judge, or None when it failed (the caller keeps its verdict)."""
        prompt = PROMPT.format(question=question or "(not given)", gold=gold,
                               answer=answer[: self.config.max_answer_chars])
        with self._lock:
            self.calls += 1
        delay = self.config.backoff
        with self._slots:
            for attempt in range(self.config.retries + 1):
                try:
                    verdict = self.parse_verdict(self._request(prompt))
                    if verdict is not None:
                        return verdict
                except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
                    pass
                if attempt < self.config.retries:
                    time.sleep(delay)
                    delay *= 2
        with self._lock:
            self.failures += 1
        return None
