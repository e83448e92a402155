"""The generate stage: the teacher answers every training and validation prompt, through the request cache.

Reads data.training / data.validation; writes teacher/cache.sqlite (journal of every call) and
teacher/outputs/<split>.jsonl (one row per prompt and sample: id, sample, messages, output, finish_reason,
reference). A prompt already in the cache is never sent again, so an interrupted stage resumes where it stopped.

Optional per-row field for logit distillation (generation.logprobs = k), passed through validation into
data/train.jsonl:
    "logprobs": {"tokens": [str, ...],            the generated tokens as text pieces, one per position
                 "top": [[[str, float], ...], ...], the k most likely tokens and their logprobs, per position
                 "token_ids": [int, ...],          only from a local teacher: ids in the teacher's vocabulary
                 "top_ids": [[int, ...], ...]}     only from a local teacher
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import HFTeacher, JobSpec
from ..data.jsonl import Example, read_examples
from ..data.tasks import Task, task_for, teacher_messages
from ..progress import progress
from ..run_dir import RunDir
from .cache import RequestCache, request_key


@dataclass
class Request:
    example: Example
    sample: int
    body: dict[str, Any]
    key: str


def build_request(spec: JobSpec, task: Task, ex: Example, sample: int) -> Request:
    gen = spec.generation
    body = {
        "model": spec.teacher.model,
        "messages": teacher_messages(ex.messages, task),
        "temperature": spec.sampling_temperature,
        "top_p": gen.top_p,
        "max_tokens": gen.max_tokens,
        "sample": sample,
        "seed": gen.seed,
        "stop": gen.stop,
    }
    return Request(ex, sample, body, request_key(body))


def split_paths(spec: JobSpec) -> list[tuple[str, Any]]:
    return [("train", spec.data.training), ("validation", spec.data.validation)]


def run_generate(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    task = task_for(spec)
    counts: dict[str, Any] = {}
    with RequestCache(rd.cache_db) as cache:
        teacher = None
        for split, path in split_paths(spec):
            if task.name == "conversation":  # issue 4: every assistant turn regenerated in order (teachers/turns.py)
                from .turns import generate_split

                examples = list(read_examples(path, split, spec.prompts.template))
                counts[split] = generate_split(spec, task, examples, cache, rd, split, lambda: make_teacher(spec))
                continue
            reqs = [
                build_request(spec, task, ex, s)
                for ex in read_examples(path, split, spec.prompts.template)
                for s in range(spec.generation.samples)
            ]
            hits = cache.get_many(r.key for r in reqs)
            pending = [r for r in reqs if r.key not in hits]
            rd.event("generate", "split", split=split, requests=len(reqs), cached=len(reqs) - len(pending))
            if pending:
                teacher = teacher or make_teacher(spec)
                answer(teacher, spec, pending, cache, rd, split)
            answered = cache.get_many(r.key for r in reqs)
            with rd.open_jsonl(rd.outputs / f"{split}.jsonl") as write:
                for r in reqs:
                    hit = answered.get(r.key)
                    write(
                        {
                            "id": r.example.id,
                            "sample": r.sample,
                            "messages": r.example.messages,
                            "output": hit["response"] if hit else None,
                            "finish_reason": hit["finish_reason"] if hit else "error",
                            "completion_tokens": hit["completion_tokens"] if hit else None,
                            "reference": r.example.reference,
                        }
                    )
            counts[split] = {"prompts": len(reqs), "from_cache": len(reqs) - len(pending)}
        counts["ledger"] = cache.stats()
    return counts


def make_teacher(spec: JobSpec) -> Any:
    from .hf import LocalModel

    match spec.teacher:
        case HFTeacher() as t:
            return LocalModel.load(t.model, t.tokenizer, t.device, t.dtype)
    raise NotImplementedError(f"teacher kind {spec.teacher.kind!r}")


def answer(teacher: Any, spec: JobSpec, pending: list[Request], cache: RequestCache, rd: RunDir, split: str) -> None:
    """Local teacher: batched generate; each batch is committed to the cache before the next starts."""
    bs = spec.teacher.batch_size
    gen = spec.generation
    with progress(f"teacher answers ({split})", len(pending)) as bar:
        for i in range(0, len(pending), bs):
            chunk = pending[i : i + bs]
            outs = teacher.generate(
                [r.body["messages"] for r in chunk],
                max_new_tokens=gen.max_tokens,
                temperature=spec.sampling_temperature,
                top_p=gen.top_p,
                batch_size=bs,
                seed=gen.seed + 7919 * chunk[0].sample + i,
            )
            if gen.stop:
                for o in outs:
                    cut = min((o.text.find(s) for s in gen.stop if s in o.text), default=-1)
                    if cut >= 0:
                        o.text, o.finish_reason = o.text[:cut], "stop"
            cache.put_many(
                (
                    r.key,
                    r.body,
                    o.text,
                    {
                        "finish_reason": o.finish_reason,
                        "prompt_tokens": o.prompt_tokens,
                        "completion_tokens": o.completion_tokens,
                        "latency_s": o.latency_s,
                    },
                )
                for r, o in zip(chunk, outs, strict=True)
            )
            rd.event("generate", "teacher_batch", split=split, n=len(chunk))
            bar.advance(len(chunk))
