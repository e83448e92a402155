"""The chat-completions protocol: the JSON sent, and what a response becomes (an engine Outcome).

    body = wire_body(teacher, cache_body, n=1)
    out = classify(response, n, "TEACHER_API_KEY")           # -> Outcome: ok | retry | fail | fatal

A response is checked against the shape the API promises before anything is read from it; whatever else comes
back becomes a readable reason, never an exception:
    200 whose body is not valid UTF-8, not JSON, a JSON array, whose "choices" is not a list or too short, a
    choice without "message", logprobs of the wrong shape     retry (a proxy's or server's hiccup); after
                                                               max_retries the row fails with that reason
    a choice whose content is null (content filter, refusal)  that row fails at once: asking again costs money
                                                               and meets the same filter; the other choices of
                                                               an n>1 request are kept (Outcome.refused)
    5xx (an HTML error page is reduced to its title), 408/409/429
                                                               retry; Retry-After counts when it is a number of
                                                               seconds ("2", "1.5", "1.5s") or an HTTP date, and
                                                               is ignored otherwise ("soon")
    401/403 fatal, other 4xx fail: with the server's message
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import AzureOpenAITeacher, OpenAITeacher
from .engine import FATAL_STATUS, RETRY_STATUS, Outcome

RemoteTeacher = OpenAITeacher | AzureOpenAITeacher


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    logprobs: dict[str, Any] | None = None
    mean_logprob: float | None = None  # the mean of the picked tokens' logprobs, when the server sent them


class Malformed(ValueError):
    """A response that is not the shape the API promises; the message says how, in words."""


def wire_body(t: RemoteTeacher, body: dict[str, Any], n: int = 1) -> dict[str, Any]:
    """The JSON sent: the cache body minus our own fields; a sample index shifts the seed so samples differ."""
    ours = ("sample", "logprobs", "teacher", "token_logprobs")
    out = {k: v for k, v in body.items() if k not in ours and v is not None}
    out["seed"] = int(body.get("seed") or 0) + int(body.get("sample") or 0)
    if body.get("logprobs"):
        out["logprobs"], out["top_logprobs"] = True, int(body["logprobs"])
    elif body.get("token_logprobs"):  # the picked tokens' logprobs only (a cascade's logprob check)
        out["logprobs"] = True
    if n > 1:
        out["n"] = n
    if isinstance(t, AzureOpenAITeacher):
        out.pop("model", None)
    return {**out, **t.extra_body}


# ---------------------------------------------------------------------------------------------- 200: the body
def parse_response(r: httpx.Response, n: int) -> tuple[list[Answer], dict[int, str]]:
    """(the first ``n`` answers by index, {answer index: why it holds no text}). Raises Malformed."""
    data = _json(r)
    if not isinstance(data, dict):
        raise Malformed(f"the body is {_kind(data)}, not an object")
    choices = data.get("choices")
    if choices is None and data.get("error"):
        raise Malformed(f"HTTP 200 carrying an error: {_error_message(data)}")
    if not isinstance(choices, list):
        raise Malformed(f'"choices" is {_kind(choices)}, not a list')
    if len(choices) < n:
        raise Malformed(f"{len(choices)} choices, expected {n}")
    if bad := [c for c in choices if not isinstance(c, dict)]:
        raise Malformed(f"a choice is {_kind(bad[0])}, not an object")
    ordered = sorted(choices, key=lambda c: c["index"] if isinstance(c.get("index"), int) else 0)[:n]
    answers, refused = [], {}
    for i, ch in enumerate(ordered):
        a, why = parse_choice(ch, i)
        answers.append(a)
        if why:
            refused[i] = why
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    pt, ct = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    for i, a in enumerate(answers):  # usage is per request: the prompt is paid once, completions split evenly
        a.prompt_tokens = pt if i == 0 else 0
        a.completion_tokens = None if ct is None else ct // n + (1 if i < ct % n else 0)
    return answers, refused


def parse_choice(ch: dict[str, Any], i: int = 0) -> tuple[Answer, str | None]:
    """(the answer, or why this choice holds none: null content). Raises Malformed on a wrong shape."""
    msg = ch.get("message")
    if not isinstance(msg, dict):
        raise Malformed(f'choice {i} has no "message"' if msg is None else f'choice {i}: "message" is {_kind(msg)}')
    finish = ch.get("finish_reason")
    finish = _clean(finish) if isinstance(finish, str) and finish else "stop"
    content, why = msg.get("content"), None
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    if content is None:
        refusal = msg.get("refusal")
        why = f'the teacher returned no content (finish_reason "{finish}")'
        if finish == "content_filter":
            why += ": the provider's content filter blocked this answer"
        if isinstance(refusal, str) and refusal:
            why += f": {_clean(refusal)[:300]}"
        content = ""
    elif not isinstance(content, str):
        raise Malformed(f'choice {i}: "content" is {_kind(content)}, not text')
    lp = ch.get("logprobs")
    if lp is not None and not isinstance(lp, dict):
        raise Malformed(f"choice {i}: logprobs is {_kind(lp)}, not an object")
    entries = (lp or {}).get("content")
    logprobs = _logprobs(entries, i) if entries else None
    return Answer(_clean(content), finish, None, None, logprobs, _mean_picked(entries)), why


def _mean_picked(entries: Any) -> float | None:
    """The mean logprob of the picked tokens (each entry's own "logprob"); None when the server sent none."""
    vals = [e.get("logprob") for e in entries or () if isinstance(e, dict)]
    ok = [float(v) for v in vals if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return round(sum(ok) / len(ok), 4) if ok else None


def _logprobs(entries: Any, i: int) -> dict[str, Any]:
    if not isinstance(entries, list):
        raise Malformed(f'choice {i}: logprobs "content" is {_kind(entries)}, not a list')
    tokens, top = [], []
    for p, c in enumerate(entries):
        where = f"choice {i}: logprobs entry {p}"
        if not isinstance(c, dict):
            raise Malformed(f"{where} is {_kind(c)}, not an object")
        tokens.append(_token(c, where))
        alts = c.get("top_logprobs") or []
        if not isinstance(alts, list):
            raise Malformed(f'{where}: "top_logprobs" is {_kind(alts)}, not a list')
        row = []
        for k, a in enumerate(alts):
            if not isinstance(a, dict):
                raise Malformed(f"{where}: top_logprobs[{k}] is {_kind(a)}, not an object")
            v = a.get("logprob")
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or v == math.inf:
                what = "has no" if v is None else f"has {_kind(v)} as its"
                raise Malformed(f'{where}: top_logprobs[{k}] {what} "logprob"')
            row.append([_token(a, where), round(max(float(v), -9999.0), 4)])
        top.append(row)
    return {"tokens": tokens, "top": top}


def _token(d: dict[str, Any], where: str) -> str:
    tok = d.get("token", "")
    if not isinstance(tok, str):
        raise Malformed(f'{where}: "token" is {_kind(tok)}, not text')
    return _clean(tok)


def _json(r: httpx.Response) -> Any:
    raw = r.content
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Malformed(f"the body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        ctype = r.headers.get("content-type", "no content-type").split(";")[0]
        raise Malformed(f"the body is not JSON ({ctype}, {len(raw)} bytes: {readable(text)[:120]!r})") from e


def _clean(s: str) -> str:
    """Text as it can be stored: a lone surrogate (a JSON "\\ud800" escape) becomes U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return re.sub("[\ud800-\udfff]", "\ufffd", s)


def _count(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, float) and v.is_integer() and v >= 0:
        return int(v)
    return None


def _kind(v: Any) -> str:
    match v:
        case None:
            return "missing"
        case list():
            return "a JSON array"
        case dict():
            return "an object"
        case bool():
            return f"a boolean ({str(v).lower()})"
        case str():
            return f"text ({_clean(v)[:40]!r})"
        case int() | float():
            return f"a number ({v})"
    return type(v).__name__


# ---------------------------------------------------------------------------------------------- errors
def readable(text: str) -> str:
    """An HTML error page (a proxy's 502) as its title, or its text without tags; whitespace collapsed."""
    if re.search(r"<\s*(html|head|body|title|h1|!doctype)\b", text, re.I):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        text = title.group(1) if title else re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.I | re.S)
        text = re.sub(r"<[^>]*>", " ", text)
    return " ".join(text.split())


def _error_message(data: dict[str, Any]) -> str:
    err = data.get("error")
    msg = err.get("message") if isinstance(err, dict) else (err or data.get("message") or data.get("detail"))
    return str(msg or "")[:400]


def server_message(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:  # not JSON (an HTML page), or not UTF-8
        data = None
    if isinstance(data, dict) and (msg := _error_message(data)):
        return readable(_clean(msg))
    return readable(r.text or "")[:400] or r.reason_phrase or "(no message)"


def retry_after(r: httpx.Response) -> float | None:
    """Seconds to wait from retry-after-ms or Retry-After (seconds, "1.5s", or an HTTP date); None when absent
    or unreadable ("soon"): the back-off policy decides then."""
    if (ms := _seconds(r.headers.get("retry-after-ms"), "ms")) is not None:
        return ms / 1000
    ra = r.headers.get("retry-after")
    if not ra:
        return None
    if (s := _seconds(ra, "s")) is not None:
        return s
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())


def _seconds(v: str | None, unit: str) -> float | None:
    m = re.fullmatch(rf"\s*(\d+(?:\.\d+)?)\s*(?:{unit})?\s*", v or "", re.I)
    return float(m.group(1)) if m else None


def classify(r: httpx.Response, n: int, var: str) -> Outcome:
    host = urlsplit(str(r.request.url)).netloc
    if r.status_code == 200:
        try:
            answers, refused = parse_response(r, n)
        except Malformed as exc:
            return Outcome("retry", status=200, error=f"malformed response from {host}: {exc}")
        return Outcome("ok", answers=answers, status=200, refused=refused)
    msg = f"HTTP {r.status_code} from {host}: {server_message(r)}"
    if r.status_code in FATAL_STATUS:
        return Outcome(
            "fatal",
            status=r.status_code,
            error=f"the teacher at {host} refused the credentials (HTTP {r.status_code}): "
            f"check the environment variable {var} (the key, its permissions, the deployment)",
        )
    if r.status_code in RETRY_STATUS or r.status_code >= 500:
        return Outcome("retry", status=r.status_code, error=msg, retry_after=retry_after(r))
    return Outcome("fail", status=r.status_code, error=msg)
