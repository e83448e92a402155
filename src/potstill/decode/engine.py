"""The one decoder: continuous batching over a preallocated KV cache, for local teachers, evaluation and serving.

    engine = Engine(model, stop_ids=[eos], slots=64)
    outs = engine.generate([Request(ids=[...], max_new_tokens=128), ...])      # -> [Output], in input order
    outs[i].tokens, outs[i].finish ("stop" | "length" | "cancelled"), outs[i].top (top-k logprobs per token)

Requests wait in a queue sorted by prompt length; each of ``slots`` cache slots holds one request. A finished
request's slot is refilled with the next prompts (prefilled together, so the prompts of a refill have similar
lengths), writes go in place, and when the queue is empty the live rows are moved to the front so that the tail
does not compute idle slots. Llama-family models take the fast path (decode/llama.py); any other causal LM runs
the generic loop (decode/hf_loop.py: ``model()`` with a dynamic cache, finished rows leaving the batch).

Sampling is per request: greedy at temperature 0, else temperature then nucleus (top-p) with the request's own
seeded generator, so a request's answer does not depend on which others shared its batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .hf_loop import decode_batch
from .llama import LlamaRunner, supported

TopK = tuple[list[list[int]], list[list[float]]]


@dataclass
class Request:
    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # k: the top-k logprobs (raw logits) of every generated position
    on_token: Callable[[int], bool] | None = None  # sees each kept token; True ends the request ("stop")
    cancelled: bool = False  # may be set from another thread: the request ends at the next step


@dataclass
class Output:
    tokens: list[int] = field(default_factory=list)
    finish: str = "length"  # stop | length | cancelled
    top: TopK | None = None
    seconds: float = 0.0  # from the request's prefill to its last token


class _Live:
    """A request in a slot."""

    def __init__(self, index: int, req: Request, device: torch.device) -> None:
        self.index, self.req = index, req
        self.out = Output(top=([], []) if req.logprobs else None)
        self.t0 = time.perf_counter()
        self.gen: torch.Generator | None = None
        if req.temperature > 0:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(int(req.seed or 0))

    def push(self, token: int, stop: set[int]) -> bool:
        """Record ``token``; True when the request is finished."""
        if self.req.cancelled:
            self.out.finish = "cancelled"
            return True
        if token in stop:
            self.out.finish = "stop"
            return True
        self.out.tokens.append(token)
        if self.req.on_token is not None and self.req.on_token(token):
            self.out.finish = "stop"
            return True
        if len(self.out.tokens) >= self.req.max_new_tokens:
            self.out.finish = "length"
            return True
        return False


def pick(logits: torch.Tensor, live: list[_Live]) -> list[int]:
    """Next token per row: argmax for greedy rows, else temperature + top-p with the row's generator."""
    out = logits.argmax(-1).tolist()
    for r, lv in enumerate(live):
        if lv.gen is None:
            continue
        probs = torch.softmax(logits[r].float() / lv.req.temperature, dim=-1)
        if lv.req.top_p < 1.0:
            p, order = probs.sort(descending=True)
            p[(p.cumsum(-1) - p) >= lv.req.top_p] = 0.0  # the smallest prefix whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter(-1, order, p)
        out[r] = int(torch.multinomial(probs, 1, generator=lv.gen))
    return out


def _record_top(logits: torch.Tensor, live: list[_Live]) -> None:
    want = [r for r, lv in enumerate(live) if lv.req.logprobs]
    if not want:
        return
    k = max(int(live[r].req.logprobs or 0) for r in want)
    vals, ids = torch.log_softmax(logits[want].float(), dim=-1).topk(k, dim=-1)
    for r, i, v in zip(want, ids.tolist(), vals.tolist(), strict=True):
        lv = live[r]
        kk = int(lv.req.logprobs or 0)
        assert lv.out.top is not None
        lv.out.top[0].append(i[:kk])
        lv.out.top[1].append(v[:kk])


class Engine:
    def __init__(self, model: Any, stop_ids: list[int], slots: int = 64, pad_id: int = 0) -> None:
        self.model, self.stop, self.slots, self.pad_id = model, set(stop_ids), max(1, slots), pad_id
        self.runner: LlamaRunner | None = None
        self.device = next(model.parameters()).device
        self.steps = 0  # decode steps run (all requests): for tests and benchmarks

    def fast(self, max_len: int) -> bool:
        return supported(self.model, max_len)

    def _runner(self, slots: int, max_len: int) -> LlamaRunner:
        if self.runner is None or not self.runner.fits(slots, max_len):
            self.runner = None  # free the old buffers first
            self.runner = LlamaRunner(self.model, slots, max_len)
        return self.runner

    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> list[Output]:
        if not requests:
            return []
        max_len = max(len(r.ids) + max(r.max_new_tokens, 0) for r in requests) + 1
        if not self.fast(max_len):
            return self._generic(requests)
        return self._continuous(requests, max_len)

    # ------------------------------------------------------------------------------------ fast path
    def _continuous(self, requests: list[Request], max_len: int) -> list[Output]:
        outs: list[Output | None] = [None] * len(requests)
        queue = [i for i in sorted(range(len(requests)), key=lambda i: len(requests[i].ids))]
        queue.reverse()  # pop() takes the shortest first
        for i in [i for i in queue if requests[i].max_new_tokens <= 0 or requests[i].cancelled]:
            outs[i] = Output(finish="cancelled" if requests[i].cancelled else "length")
            queue.remove(i)
        slots = min(self.slots, len(queue))
        if slots == 0:
            return [o or Output() for o in outs]
        run = self._runner(slots, max_len)
        dev = self.device
        live: list[_Live | None] = [None] * slots
        tokens = torch.zeros(slots, dtype=torch.long, device=dev)
        pos = torch.zeros(slots, dtype=torch.long, device=dev)
        width = slots  # slots 0..width-1 are computed each step
        refill_at = max(1, slots // 8)

        def finish(s: int) -> None:
            lv = live[s]
            assert lv is not None
            lv.out.seconds = time.perf_counter() - lv.t0
            if lv.out.top is not None:  # one entry per kept token (a stop token's step is not kept)
                n = len(lv.out.tokens)
                lv.out.top = (lv.out.top[0][:n], lv.out.top[1][:n])
            outs[lv.index] = lv.out
            live[s] = None
            pos[s] = 0  # an idle slot does not widen the attention span

        while True:
            free = [s for s in range(width) if live[s] is None]
            busy = width - len(free)
            if queue and free and (len(free) >= refill_at or busy == 0):
                take = [queue.pop() for _ in range(min(len(free), len(queue)))]
                where = free[: len(take)]
                lens = [len(requests[i].ids) for i in take]
                ids = torch.full((len(take), max(lens)), self.pad_id, dtype=torch.long)
                for r, i in enumerate(take):
                    ids[r, : lens[r]] = torch.tensor(requests[i].ids, dtype=torch.long)
                slot_t = torch.tensor(where, dtype=torch.long, device=dev)
                logits = run.prefill(ids.to(dev), torch.tensor(lens, device=dev), slot_t)
                new = [_Live(i, requests[i], dev) for i in take]
                _record_top(logits, new)
                for s, lv, t, n in zip(where, new, pick(logits, new), lens, strict=True):
                    live[s] = lv
                    if lv.push(t, self.stop):
                        finish(s)
                    else:
                        tokens[s], pos[s] = t, n
            active = [s for s in range(width) if live[s] is not None]
            if not active:
                if not queue:
                    break
                continue
            if not queue and len(active) <= width // 2:  # the tail: move the live rows to the front
                src = torch.tensor(active, dtype=torch.long, device=dev)
                dst = torch.arange(len(active), device=dev)
                run.move(src, dst, int(pos[src].max()) + 1)
                tokens[: len(active)], pos[: len(active)] = tokens[src].clone(), pos[src].clone()
                moved = [live[s] for s in active]
                live = moved + [None] * (slots - len(active))
                width = len(active)
                active = list(range(width))
            logits = run.step(tokens[:width], pos[:width], width, int(pos[:width].max()) + 1)
            self.steps += 1
            rows = [live[s] for s in active]
            sub = logits[active] if len(active) < width else logits
            _record_top(sub, rows)  # type: ignore[arg-type]
            for s, lv, t in zip(active, rows, pick(sub, rows), strict=True):  # type: ignore[arg-type]
                assert lv is not None
                if lv.push(t, self.stop):
                    finish(s)
                else:
                    tokens[s], pos[s] = t, pos[s] + 1
        return [o or Output() for o in outs]

    # ------------------------------------------------------------------------------------ other models
    def _generic(self, requests: list[Request]) -> list[Output]:
        """Other architectures: length-sorted batches of ``slots`` through model() with a dynamic cache."""
        outs: list[Output] = [Output() for _ in requests]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids))
        for b in range(0, len(order), self.slots):
            idx = order[b : b + self.slots]
            groups: dict[tuple[float, float, int | None, int | None], list[int]] = {}
            for i in idx:
                r = requests[i]
                groups.setdefault((r.temperature, r.top_p, r.logprobs, r.seed), []).append(i)
            for (temp, top_p, k, seed), members in groups.items():
                t0 = time.perf_counter()
                width = max(len(requests[i].ids) for i in members)
                ids = torch.full((len(members), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(members), width), dtype=torch.long)
                for r, i in enumerate(members):
                    n = len(requests[i].ids)
                    ids[r, width - n :] = torch.tensor(requests[i].ids)
                    mask[r, width - n :] = 1
                if seed is not None:
                    torch.manual_seed(seed)
                most = max(requests[i].max_new_tokens for i in members)
                toks, stopped, tops = decode_batch(
                    self.model, ids.to(self.device), mask.to(self.device), most, sorted(self.stop), temp, top_p, k
                )
                dt = time.perf_counter() - t0
                for r, i in enumerate(members):
                    req, cap = requests[i], requests[i].max_new_tokens
                    o = Output(tokens=toks[r][:cap], seconds=dt)
                    o.finish = "stop" if stopped[r] and len(toks[r]) <= cap else "length"
                    for n, t in enumerate(o.tokens):  # stop strings, after the fact on this path
                        if req.on_token is not None and req.on_token(t):
                            o.tokens, o.finish = o.tokens[: n + 1], "stop"
                            break
                    if req.cancelled:
                        o.finish = "cancelled"
                    if tops is not None:
                        o.top = (tops[r][0][:cap], tops[r][1][:cap])
                    outs[i] = o
        return outs
