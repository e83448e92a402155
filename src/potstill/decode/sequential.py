"""One request at a time over a backend that keeps its own key/value cache for one sequence: llama.cpp (a GGUF
export) always, and an ONNX export for a lone request (``server/backends.py``: its past stays inside onnxruntime).

    decoder = SequentialDecoder(backend, stop_ids)    # backend.feed(ids, fresh) -> logits; .position; .max_positions
    decoder.generate(requests, more=None)             # -> [Output], as Engine.generate

Sampling and stopping are the engine's own (``engine.pick``, ``_Live.push``): greedy, or temperature + top-p with
the request's seeded generator, so a request's answer is the one the batched engine gives for the same logits.
"""

from __future__ import annotations

import time
from typing import Any

from .engine import Output, Request, _Live, _record, pick


class SequentialDecoder:
    """The decoder interface (``Engine.generate``) over a backend that holds one sequence, one request at a time."""

    def __init__(self, backend: Any, stop_ids: list[int]) -> None:
        self.backend, self.stop = backend, set(stop_ids)
        self.slots = 1  # set by the server and the evaluation like the engine's; requests still run in turn
        self.runs = 0

    def _one(self, req: Request) -> Output:
        import torch

        if req.cancelled or req.max_new_tokens <= 0:
            return Output(finish="cancelled" if req.cancelled else "length")
        live = _Live(None, req, torch.device("cpu"))
        limit = self.backend.max_positions or 1 << 30
        if len(req.ids) >= limit:
            return Output(finish="length")
        logits = self.backend.feed(list(req.ids), fresh=True)
        plain = live.gen is None and req.logprobs is None  # greedy, nothing recorded: numpy's argmax is enough
        while True:
            if plain:
                token = int(logits.argmax())
            else:
                row = torch.from_numpy(logits)[None, :]
                token = pick(row, [live])[0]
                _record(row, [live], [token])
            if live.push(token, self.stop):
                break
            if self.backend.position >= limit:
                live.out.finish = "length"
                break
            logits = self.backend.feed([token], fresh=False)
        out = live.out
        n = len(out.tokens)
        if out.chosen is not None:
            out.chosen = out.chosen[:n]
        if out.top is not None:
            out.top = (out.top[0][:n], out.top[1][:n])
        out.seconds = time.perf_counter() - live.t0
        return out

    def generate(self, requests: list[Request], more: Any = None) -> list[Output]:
        self.runs += 1
        outs = [self._done(req) for req in requests]
        while more is not None and (arrived := more(1)):
            for req in arrived:
                self._done(req)
        return outs

    def _done(self, req: Request) -> Output:
        out = self._one(req)
        if req.on_done is not None:
            req.on_done(out)
        return out
