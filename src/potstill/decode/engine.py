"""The one decoder: continuous batching over a preallocated KV cache, for local teachers, evaluation and serving.

    engine = Engine(model, stop_ids=[eos], slots=64)
    outs = engine.generate([Request(ids=[...], max_new_tokens=128), ...])      # -> [Output], in input order
    outs[i].tokens, outs[i].finish ("stop" | "length" | "cancelled"), outs[i].top (top-k logprobs per token)
    engine.generate(first, more=poll)   # serving: poll(free) -> new Requests, asked every step while slots are free

Requests wait in a queue (sorted by prompt length for one call's list; in arrival order for those ``more``
brings); each of ``slots`` cache slots holds one request. A finished request's slot is refilled with the next
prompts (prefilled together), writes go in place, and when the queue is empty the live rows are moved to the
front so that the tail does not compute idle slots. ``Request.on_done(output)`` fires as each request ends, so a
server answers it then, not when the run ends; with ``more`` the run lasts while requests keep arriving.

Runners: Llama-family torch models take the fast path (decode/llama.py); a backend that is no torch module (ONNX
Runtime) gives its step function (``forward``, see decode/past.py) and runs through the same scheduler; when
serving, other torch models with plain KV caches do too, over ``model()``. Anything else runs the generic loop
(decode/hf_loop.py: whole batches, finished rows leaving; ``on_token`` sees the tokens after the batch ends).

Sampling is per request: greedy at temperature 0, else temperature then nucleus (top-p) with the request's own
seeded generator, so a request's answer does not depend on which others shared its batch.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .hf_loop import decode_batch
from .llama import LlamaRunner, supported
from .past import PastRunner, StepFn, hf_step, past_supported

TopK = tuple[list[list[int]], list[list[float]]]
MIN_PREFIX = 4  # a prompt prefix shared by every request of a batch run is computed once when this long
NO_LOGPROB = -9999.0  # OpenAI's value for a logprob that is not known (the generic loop keeps only the top-k)


@dataclass
class Request:
    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # k: the top-k logprobs (raw logits) of every generated position; 0 too: the picked's
    on_token: Callable[[int], bool] | None = None  # sees each kept token; True ends the request ("stop")
    cancelled: bool = False  # may be set from another thread: the request ends at the next step
    on_done: Callable[[Output], None] | None = None  # called once, on the decoding thread, when the request ends


@dataclass
class Output:
    tokens: list[int] = field(default_factory=list)
    finish: str = "length"  # stop | length | cancelled
    top: TopK | None = None
    seconds: float = 0.0  # from the request's prefill to its last token
    chosen: list[float] | None = None  # with ``logprobs`` set (0 too): the logprob of each kept token


More = Callable[[int], list[Request]]  # more(free slots) -> requests to start now


class _Live:
    """A request in a slot."""

    def __init__(self, index: int | None, req: Request, device: torch.device) -> None:
        self.index, self.req = index, req
        self.out = Output(top=([], []) if req.logprobs else None, chosen=[] if req.logprobs is not None else None)
        self.t0 = time.perf_counter()
        self.gen: torch.Generator | None = None
        if req.temperature > 0:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(int(req.seed or 0) % (1 << 64))

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
    """Next token per row: argmax for greedy rows, else temperature + top-p by inverse CDF.

    The sampled rows' distributions are computed together; each row then draws one uniform number from its own
    generator, so its token depends on its seed and its logits only (not on which rows share the step). One
    tiny draw per row instead of one multinomial call: ~5 µs instead of ~140 µs a row on a CPU core."""
    out = logits.argmax(-1).tolist()
    rows = [r for r, lv in enumerate(live) if lv.gen is not None]
    if not rows:
        return out
    dev = logits.device
    temps = torch.tensor([live[r].req.temperature for r in rows], device=dev)[:, None]
    probs = torch.softmax(logits[rows].float() / temps, dim=-1)
    tops = [live[r].req.top_p for r in rows]
    if min(tops) < 1.0:
        p, order = probs.sort(dim=-1, descending=True)
        top = torch.tensor(tops, device=dev)[:, None]
        p[((p.cumsum(-1) - p) >= top) & (top < 1.0)] = 0.0  # the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, p)
    cdf = probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=live[r].gen, device=dev) for r in rows])
    at = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    last = probs.size(-1) - 1 - (probs > 0).flip(-1).int().argmax(-1)  # never past the last possible token
    for r, t in zip(rows, torch.minimum(at, last).tolist(), strict=True):
        out[r] = int(t)
    return out


def _record(logits: torch.Tensor, live: list[_Live], picked: list[int]) -> None:
    """The picked token's logprob and the top-k, for the rows that asked (log-softmax of the raw logits)."""
    want = [r for r, lv in enumerate(live) if lv.req.logprobs is not None]
    if not want:
        return
    lsm = torch.log_softmax(logits[want].float(), dim=-1)
    at = torch.tensor([picked[r] for r in want], device=lsm.device)
    chosen = lsm.gather(1, at[:, None])[:, 0].tolist()
    k = max(int(live[r].req.logprobs or 0) for r in want)
    ids: list[list[int]] = []
    vals: list[list[float]] = []
    if k:
        top = lsm.topk(k, dim=-1)
        ids, vals = top.indices.tolist(), top.values.tolist()
    for j, r in enumerate(want):
        out, kk = live[r].out, int(live[r].req.logprobs or 0)
        assert out.chosen is not None
        out.chosen.append(chosen[j])
        if kk and out.top is not None:
            out.top[0].append(ids[j][:kk])
            out.top[1].append(vals[j][:kk])


class Threads:
    """Picks, and re-checks every ``period`` steps, the faster of one thread and torch's thread count for the
    decode steps. A step of a small model is many small operations: on a quiet machine two threads are faster,
    but when another process holds a core every parallel region waits for a descheduled thread, and a step can
    take 20x longer (measured on 2 cores: 57 vs 1.6 answers/s); one thread then keeps its speed."""

    def __init__(self, enabled: bool, period: int = 400, trial: int = 2) -> None:
        self.most = torch.get_num_threads()
        self.enabled = enabled and self.most > 1
        self.period, self.trial = period, trial
        self.n, self.choice = 0, self.most
        self.times: dict[int, float] = {}

    def _setting(self) -> int:
        k = self.n % self.period
        if k < self.trial:
            return 1
        if k < 2 * self.trial:
            return self.most
        return self.choice

    @contextlib.contextmanager
    def chosen(self) -> Iterator[None]:
        """Run the block (a prefill) with the current choice."""
        if not self.enabled:
            yield
            return
        torch.set_num_threads(self.choice)
        try:
            yield
        finally:
            torch.set_num_threads(self.most)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        use = self._setting()
        torch.set_num_threads(use)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            k = self.n % self.period
            if k < 2 * self.trial:
                self.times[use] = self.times.get(use, 0.0) + time.perf_counter() - t0
                if k == 2 * self.trial - 1:
                    self.choice = min(self.times, key=lambda t: self.times[t])
                    self.times = {}
            self.n += 1
            torch.set_num_threads(self.most)


def _need(r: Request) -> int:
    return len(r.ids) + max(r.max_new_tokens, 0) + 1


class Engine:
    def __init__(
        self, model: Any, stop_ids: list[int], slots: int = 64, pad_id: int = 0, forward: StepFn | None = None
    ) -> None:
        """``forward``: the step function of a backend that is no torch module (``model`` may then be None)."""
        self.model, self.stop, self.slots, self.pad_id = model, set(stop_ids), max(1, slots), pad_id
        self.forward = forward
        self.runner: Any = None
        self.device = torch.device("cpu") if model is None else next(model.parameters()).device
        self.steps = 0  # decode steps run (all requests): for tests and benchmarks
        self.runs = 0  # generate() calls
        self.on_step: Callable[[list[Request]], None] | None = None  # sees the live requests before each step
        self.threads = Threads(self.device.type == "cpu")  # kept across runs: its choice and its trial clock

    def fast(self, max_len: int) -> bool:
        return self.forward is None and supported(self.model, max_len)

    def _runner(self, slots: int, max_len: int, serving: bool) -> Any:
        """A runner that holds ``slots`` rows of ``max_len`` positions, or None for the generic loop."""
        if self.forward is not None:
            kind: type = PastRunner
        elif supported(self.model, max_len):
            kind = LlamaRunner
        elif serving and past_supported(self.model, max_len):
            kind = PastRunner
        else:
            return None
        if type(self.runner) is kind and self.runner.fits(slots, max_len):
            return self.runner
        self.runner = None  # free the old buffers first
        if kind is LlamaRunner:
            self.runner = LlamaRunner(self.model, slots, max_len)
        else:
            self.runner = PastRunner(self.forward or hf_step(self.model), slots, max_len)
        return self.runner

    @torch.inference_mode()
    def generate(self, requests: list[Request], more: More | None = None) -> list[Output]:
        """Outputs of ``requests`` in input order; with ``more``, also runs what it brings until it brings none
        while nothing is live (those are answered through ``on_done`` only)."""
        self.runs += 1
        outs: list[Output | None] = [None] * len(requests)
        if more is None:
            if not requests:
                return []
            slots = min(self.slots, len(requests))
            run = self._runner(slots, max(_need(r) for r in requests), serving=False)
            if run is None:
                self._generic_done(list(enumerate(requests)), outs)
            else:
                order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids))
                cut = self._prefix(run, [requests[i] for i in order])
                self._continuous(run, slots, deque((i, requests[i]) for i in order), None, outs, cut)
            return [o or Output() for o in outs]
        pending: deque[tuple[int | None, Request]] = deque(enumerate(requests))
        while True:
            if not pending:
                pending.extend((None, r) for r in more(self.slots))
                if not pending:
                    break
            need = -(-max(_need(r) for _, r in pending) // 256) * 256  # room to spare for later arrivals
            run = self._runner(self.slots, need, serving=True)
            if run is None:
                batch = list(pending)
                pending.clear()
                self._generic_done(batch, outs)
            else:  # returns when idle: nothing waits, or the next request needs a longer cache
                self._continuous(run, self.slots, pending, more, outs)
        return [o or Output() for o in outs]

    @staticmethod
    def _prefix(run: Any, requests: list[Request]) -> int:
        """Compute once the prompt prefix every request shares (fast path, a known set of requests); its length."""
        if not isinstance(run, LlamaRunner) or len(requests) < 2:
            return 0
        first, most = requests[0].ids, min(len(r.ids) for r in requests) - 1  # each keeps a token to prefill
        shared = next((k for k in range(most) if any(r.ids[k] != first[k] for r in requests)), max(most, 0))
        shared = first[:shared]
        return run.set_prefix(shared if len(shared) >= MIN_PREFIX else [])

    def _done(self, index: int | None, req: Request, out: Output, outs: list[Output | None]) -> None:
        if index is not None:
            outs[index] = out
        if req.on_done is not None:
            req.on_done(out)

    def _settled(self, index: int | None, req: Request, outs: list[Output | None]) -> bool:
        """Answer at once a request that needs no decoding (cancelled, or no tokens asked)."""
        if req.max_new_tokens > 0 and not req.cancelled:
            return False
        self._done(index, req, Output(finish="cancelled" if req.cancelled else "length"), outs)
        return True

    # ------------------------------------------------------------------------------------ runners
    def _continuous(
        self,
        run: Any,
        slots: int,
        pending: deque[tuple[int | None, Request]],
        more: More | None,
        outs: list[Any],
        cut: int = 0,  # the shared prefix already computed (Engine._prefix): prompts are prefilled after it
    ) -> None:
        dev = self.device
        threads = self.threads
        for item in [it for it in pending if it[1].max_new_tokens <= 0 or it[1].cancelled]:
            pending.remove(item)
            self._settled(*item, outs)
        live: list[_Live | None] = [None] * slots
        tokens = torch.zeros(slots, dtype=torch.long, device=dev)
        pos = torch.zeros(slots, dtype=torch.long, device=dev)
        width = slots  # slots 0..width-1 are computed each step
        refill_at = 1 if more is not None else max(1, slots // 8)

        def finish(s: int) -> None:
            lv = live[s]
            assert lv is not None
            lv.out.seconds = time.perf_counter() - lv.t0
            n = len(lv.out.tokens)  # one logprob entry per kept token (a stop token's step is not kept)
            if lv.out.top is not None:
                lv.out.top = (lv.out.top[0][:n], lv.out.top[1][:n])
            if lv.out.chosen is not None:
                lv.out.chosen = lv.out.chosen[:n]
            live[s] = None
            pos[s] = 0  # an idle slot does not widen the attention span
            self._done(lv.index, lv.req, lv.out, outs)

        while True:
            free = [s for s in range(slots) if live[s] is None]
            if more is not None and len(free) > len(pending):
                pending.extend((None, r) for r in more(len(free) - len(pending)))
            while pending and self._settled(*pending[0], outs):
                pending.popleft()
            n = 0
            while n < min(len(free), len(pending)) and _need(pending[n][1]) <= run.max_len:
                n += 1
            if n and (len(free) >= refill_at or len(free) == slots):
                take = [pending.popleft() for _ in range(n)]
                where = free[:n]
                width = max(width, where[-1] + 1)
                lens = [len(r.ids) - cut for _, r in take]
                ids = torch.full((n, max(lens)), self.pad_id, dtype=torch.long)
                for k, (_, r) in enumerate(take):
                    ids[k, : lens[k]] = torch.tensor(r.ids[cut:], dtype=torch.long)
                slot_t = torch.tensor(where, dtype=torch.long, device=dev)
                lens_t = torch.tensor(lens, device=dev)
                args = (ids.to(dev), lens_t, slot_t)
                with threads.chosen():
                    logits = run.prefill(*args, True) if cut else run.prefill(*args)
                new = [_Live(i, r, dev) for i, r in take]
                picked = pick(logits, new)
                _record(logits, new, picked)
                for s, lv, t, m in zip(where, new, picked, lens, strict=True):
                    live[s] = lv
                    if lv.push(t, self.stop):
                        finish(s)
                    else:
                        tokens[s], pos[s] = t, cut + m
            active = [s for s in range(width) if live[s] is not None]
            if not active:
                if pending and _need(pending[0][1]) <= run.max_len:
                    continue
                return
            if not pending and len(active) <= width // 2:  # the tail: move the live rows to the front
                src = torch.tensor(active, dtype=torch.long, device=dev)
                dst = torch.arange(len(active), device=dev)
                run.move(src, dst, int(pos[src].max()) + 1)
                tokens[: len(active)], pos[: len(active)] = tokens[src].clone(), pos[src].clone()
                live = [live[s] for s in active] + [None] * (slots - len(active))
                width = len(active)
                active = list(range(width))
            rows: list[_Live] = [lv for lv in (live[s] for s in active) if lv is not None]
            if self.on_step is not None:
                self.on_step([lv.req for lv in rows])
            with threads.step():
                logits = run.step(tokens[:width], pos[:width], width, int(pos[:width].max()) + 1)
            self.steps += 1
            sub = logits[active] if len(active) < width else logits
            picked = pick(sub, rows)
            _record(sub, rows, picked)
            for s, lv, t in zip(active, rows, picked, strict=True):
                if lv.push(t, self.stop):
                    finish(s)
                else:
                    tokens[s], pos[s] = t, pos[s] + 1

    def _generic_done(self, items: list[tuple[int | None, Request]], outs: list[Output | None]) -> None:
        go = [(i, r) for i, r in items if not self._settled(i, r, outs)]
        for (i, r), o in zip(go, self._generic([r for _, r in go]) if go else [], strict=True):
            self._done(i, r, o, outs)

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
                    torch.manual_seed(seed % (1 << 64))
                most = max(requests[i].max_new_tokens for i in members)
                kk = None if k is None else max(k, 1)  # top-1 gives a greedy token's own logprob
                toks, stopped, tops = decode_batch(
                    self.model, ids.to(self.device), mask.to(self.device), most, sorted(self.stop), temp, top_p, kk
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
                        top_ids, top_vals = tops[r][0][: len(o.tokens)], tops[r][1][: len(o.tokens)]
                        o.top = ([x[:k] for x in top_ids], [v[:k] for v in top_vals]) if k else None
                        # the picked token's logprob when it is the most likely; this loop keeps no other
                        firsts = zip(top_ids, top_vals, o.tokens, strict=True)
                        o.chosen = [v[0] if x[0] == t else NO_LOGPROB for x, v, t in firsts]
                    outs[i] = o
        return outs
