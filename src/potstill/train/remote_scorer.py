"""An OpenAI-compatible teacher that scores given tokens: vLLM's ``prompt_logprobs`` on /v1/completions.

    scorer = RemoteScorer.probed(spec, tokenizer)    # ConfigError when the server cannot score given tokens
    scorer([[ids...], ...])                          # -> per sequence, per position: (top ids, top logprobs)

Each sequence is sent as token ids (``"prompt": [ids]``, ``max_tokens: 1``, ``prompt_logprobs: k``); position j
of the answer holds the teacher's top-k (and the given token) for token j given the tokens before it, position 0
holds nothing. The probe, before any training, sends one short sequence and checks that the answer has one entry
per position, keyed by token id, and that the tokens it names are the student tokenizer's (a server with another
tokenizer would score different text). Requests go to the teacher's base URLs in turn, ``concurrency`` at once,
with the teacher's retries on 408/409/429/5xx and connection errors; keys come from the variables the spec names
and never appear in messages.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from typing import Any

import httpx

from ..config import JobSpec, OpenAITeacher
from ..errors import ConfigError, TeacherError
from ..teachers.engine import RETRY_STATUS
from ..teachers.openai import credentials, scrub
from ..teachers.wire import server_message

PROBE_TEXT = "Scoring probe: 12 plus 30 is 42."
TopK = tuple[list[list[int]], list[list[float]]]


class ScoreError(ValueError):
    """The server answered, but not with prompt logprobs of the expected shape."""


def parse_prompt_logprobs(body: Any, n: int) -> TopK:
    """vLLM's ``choices[0].prompt_logprobs`` ([None, {"id": {"logprob": x, ...}, ...}, ...]) as top-k lists."""
    try:
        entries = body["choices"][0]["prompt_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ScoreError("the answer has no choices[0].prompt_logprobs") from None
    if not isinstance(entries, list) or len(entries) != n:
        got = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise ScoreError(f"prompt_logprobs has {got} entries for {n} prompt tokens")
    ids: list[list[int]] = []
    lps: list[list[float]] = []
    for e in entries:
        e = e or {}
        if not isinstance(e, dict):
            raise ScoreError(f"a prompt_logprobs entry is a {type(e).__name__}, not an object")
        try:
            pairs = sorted((int(k), float(v["logprob"] if isinstance(v, dict) else v)) for k, v in e.items())
        except (KeyError, TypeError, ValueError):
            raise ScoreError(f"a prompt_logprobs entry is not {{token id: {{logprob}}}}: {str(e)[:80]}") from None
        ids.append([i for i, _ in pairs])
        lps.append([x for _, x in pairs])
    return ids, lps


class RemoteScorer:
    def __init__(self, spec: JobSpec, k: int, transport: httpx.BaseTransport | None = None) -> None:
        t = spec.teacher_list()[0]
        assert isinstance(t, OpenAITeacher)
        self.t, self.k = t, k
        self.headers, self.secrets = credentials(t)
        bases = [t.base_url] if isinstance(t.base_url, str) else t.base_url
        self.urls = [b.rstrip("/") + "/completions" for b in bases]
        self.workers = t.concurrency or spec.generation.concurrency
        self.client = httpx.Client(timeout=t.timeout_s, headers=self.headers, transport=transport)
        self._turn = count()

    @classmethod
    def probed(cls, spec: JobSpec, tok: Any, transport: httpx.BaseTransport | None = None) -> RemoteScorer:
        """A scorer whose server has just shown that it scores given tokens with the student's tokenizer."""
        op = spec.hyperparameters.on_policy
        assert op is not None
        scorer = cls(spec, op.top_logprobs, transport)
        scorer.probe(tok)
        return scorer

    def _fail(self, why: str) -> ConfigError:
        return ConfigError(
            f"hyperparameters.on_policy: the teacher at {self.urls[0]} cannot score given tokens ({why}); on-policy "
            "distillation needs a server that returns prompt logprobs for token-id prompts (vLLM: "
            "prompt_logprobs) or a local teacher (teacher.kind: hf) with the student's tokenizer"
        )

    def probe(self, tok: Any) -> None:
        ids = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        try:
            r = self._post(self.urls[0], ids, retries=1)
        except TeacherError as exc:
            raise self._fail(str(exc)) from None
        if r.status_code != 200:
            raise self._fail(f"HTTP {r.status_code}: {scrub(server_message(r), self.secrets)}")
        try:
            top_ids, _ = parse_prompt_logprobs(r.json(), len(ids))
        except (ScoreError, ValueError) as exc:
            raise self._fail(str(exc)) from None
        missing = [j for j in range(1, len(ids)) if ids[j] not in top_ids[j]]
        if missing:
            raise self._fail(f"its prompt_logprobs do not name the given token at {len(missing)} positions")
        named = r.json()["choices"][0]["prompt_logprobs"]
        differ = []
        for j in range(1, len(ids)):
            got = (named[j] or {}).get(str(ids[j]))
            text = got.get("decoded_token") if isinstance(got, dict) else None
            if text is not None and text.strip() != tok.decode([ids[j]]).strip():
                differ.append((ids[j], text))
        if len(differ) * 2 > len(ids) - 1:
            i, text = differ[0]
            raise self._fail(
                f"its tokenizer differs from the student's: token id {i} is {text!r} there, "
                f"{tok.decode([i])!r} here; pick a teacher from the student's model family"
            )

    def _post(self, url: str, ids: list[int], retries: int | None = None) -> httpx.Response:
        body = {
            **self.t.extra_body,
            "model": self.t.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": self.k,
        }
        tries = self.t.max_retries if retries is None else retries
        for attempt in range(tries + 1):
            try:
                r = self.client.post(url, json=body)
            except httpx.HTTPError as exc:
                err = f"{type(exc).__name__} from {url}"
                if attempt == tries:
                    raise TeacherError(f"scoring request failed: {err}") from None
            else:
                if (r.status_code not in RETRY_STATUS and r.status_code < 500) or attempt == tries:
                    return r
            time.sleep(min(self.t.retry_backoff_s * 2**attempt, self.t.max_backoff_s))
        raise AssertionError("unreachable")

    def _score(self, ids: list[int]) -> TopK:
        url = self.urls[next(self._turn) % len(self.urls)]
        r = self._post(url, ids)
        if r.status_code != 200:
            msg = scrub(server_message(r), self.secrets)
            raise TeacherError(f"the teacher at {url} did not score a sampled completion: HTTP {r.status_code} {msg}")
        try:
            return parse_prompt_logprobs(r.json(), len(ids))
        except (ScoreError, ValueError) as exc:
            raise TeacherError(f"the teacher at {url} answered a scoring request wrongly: {exc}") from None

    def __call__(self, sequences: list[list[int]]) -> list[TopK]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(sequences)))) as pool:
            return list(pool.map(self._score, sequences))
