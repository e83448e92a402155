"""On-policy distillation's parts: the spec, the steps' coins, the sampled completions, the LoRA sampler, the plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUESTIONS

from potstill.config import OnPolicySpec, load_spec, validate_spec
from potstill.decode import stop_token_ids
from potstill.decode.engine import Engine, Request
from potstill.errors import ConfigError
from potstill.report.plots import loss_plot, on_policy_series
from potstill.teachers.hf import load_causal_lm, load_tokenizer
from potstill.train.data import IGNORE, encode_chat
from potstill.train.on_policy import OnPolicy, _Sampler, _seed, end_of_turn, prompts_of
from potstill.train.packing import pack

BASE = {"name": "x", "task_type": "qa", "teacher": "t", "student": "s", "data": {"training": "a", "validation": "b"}}


def _spec(**op: object) -> dict:
    return {**BASE, "hyperparameters": {"on_policy": op}}


def test_spec_defaults_and_range_checks() -> None:
    op = validate_spec(_spec()).hyperparameters.on_policy
    assert op == OnPolicySpec()
    assert (op.lmbda, op.beta, op.temperature, op.seq_kd, op.after_steps) == (0.5, 0.5, 0.9, False, 0)
    for bad in ({"lmbda": 1.5}, {"beta": -0.1}, {"temperature": 0}, {"max_new_tokens": 0}, {"after_steps": -1}):
        with pytest.raises(ConfigError):
            validate_spec(_spec(**bad))
    with pytest.raises(ConfigError, match="did you mean 'lmbda'"):
        validate_spec(_spec(lambd=0.5))
    validate_spec(_spec(lmbda=0, beta=0))  # the ends are allowed: lmbda 0 is dense KD, beta 0 forward KL
    validate_spec(_spec(lmbda=1, beta=1))


def test_teachers_that_cannot_score_are_spec_errors_with_the_line(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    azure = {"kind": "azure_openai", "endpoint": "https://x.openai.azure.com", "deployment": "d"}
    job.write_text(yaml.safe_dump({**BASE, "teacher": azure, "hyperparameters": {"on_policy": {"lmbda": 1}}}))
    line = job.read_text().splitlines().index("hyperparameters:") + 1
    with pytest.raises(ConfigError) as err:
        load_spec(job)
    assert f"job.yaml:{line}: hyperparameters: on_policy needs a teacher that scores given tokens" in str(err.value)
    assert "Azure OpenAI returns none" in str(err.value)
    openai = {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    validate_spec({**BASE, "teacher": openai, "hyperparameters": {"on_policy": {}}})  # probed before training
    with pytest.raises(ConfigError, match=r"seq_kd samples from the teacher .* needs a local teacher"):
        validate_spec({**BASE, "teacher": openai, "hyperparameters": {"on_policy": {"seq_kd": True}}})
    with pytest.raises(ConfigError, match=r"after_steps \(10\) >= max_steps \(10\): no on-policy step would run"):
        validate_spec({**BASE, "hyperparameters": {"max_steps": 10, "on_policy": {"after_steps": 10}}})
    auto = {"max_steps": "auto", "max_minutes": 5, "on_policy": {"after_steps": 10}}  # no fixed end to compare
    assert validate_spec({**BASE, "hyperparameters": auto}).hyperparameters.on_policy.after_steps == 10
    two = [{"name": "a", "kind": "hf", "model": "t"}, {"name": "b", "kind": "hf", "model": "u"}]
    several = {k: v for k, v in BASE.items() if k != "teacher"} | {"teachers": two, "teaching": {"strategy": "pool"}}
    with pytest.raises(ConfigError, match=r"on_policy scores the student's samples with one teacher"):
        validate_spec({**several, "hyperparameters": {"on_policy": {}}})
    one = {**several, "teachers": two[:1], "teaching": None, "hyperparameters": {"on_policy": {"seq_kd": True}}}
    assert validate_spec(one).teacher_list()[0].name == "a"  # a list of one is that teacher


def test_the_coin_of_a_step_depends_on_seed_and_step_only() -> None:
    def modes(seed: int, **kw: object) -> list[str | None]:
        op = OnPolicy(OnPolicySpec(**kw), seed, [1], 0, 64, scorer=lambda seqs: [])
        return [op.mode(s) for s in range(400)]

    half = modes(0, lmbda=0.5)
    assert half == modes(0, lmbda=0.5) and half != modes(1, lmbda=0.5)
    assert 150 < half.count("student") < 250 and set(half) == {"student", None}
    assert set(modes(0, lmbda=0.0)) == {None} and set(modes(0, lmbda=1.0)) == {"student"}
    assert set(modes(0, lmbda=0.0, seq_kd=True)) == {"teacher"}
    warm = modes(0, lmbda=1.0, after_steps=7)
    assert warm[:7] == [None] * 7 and set(warm[7:]) == {"student"}


@pytest.fixture(scope="module")
def pair(tiny_models: dict) -> dict:
    tok = load_tokenizer(str(tiny_models["teacher"]))
    rows = [
        encode_chat(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": f"Answer: {a}"}], 64)
        for q, a in QUESTIONS
    ]
    cpu = torch.device("cpu")
    return {
        "tok": tok,
        "rows": rows,
        "student": load_causal_lm(str(tiny_models["student"]), cpu, torch.float32),
        "teacher": load_causal_lm(str(tiny_models["teacher"]), cpu, torch.float32),
    }


def _op(pair: dict, teacher_prompts: dict | None = None, **kw: object) -> OnPolicy:
    stops = stop_token_ids(pair["tok"])
    spec = OnPolicySpec(**{"lmbda": 1.0, "max_new_tokens": 6, "temperature": 1.0, **kw})
    end = end_of_turn(pair["rows"], stops)
    pad = pair["tok"].pad_token_id
    return OnPolicy(spec, 42, stops, pad, 64, end, teacher=pair["teacher"], teacher_prompts=teacher_prompts)


def _with_system(pair: dict) -> dict:
    """Each row's prompt -> the same question after the system message "Answer." (how the tiny jobs ask)."""
    tok, out = pair["tok"], {}
    for (q, _), row in zip(QUESTIONS, pair["rows"], strict=True):
        msgs = [{"role": "system", "content": "Answer."}, {"role": "user", "content": q}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        out[tuple(prompts_of(row)[0])] = tok(text, add_special_tokens=False)["input_ids"]
    return out


def test_sampled_rows_are_prompt_then_the_students_own_completion(pair: dict) -> None:
    op, student, rows = _op(pair), pair["student"], pair["rows"]
    (batch,) = op.batches(student, [[0, 3, 5]], rows, step=4, who="student")
    again = op.batches(student, [[0, 3, 5]], rows, step=4, who="student")[0]
    other = op.batches(student, [[0, 3, 5]], rows, step=5, who="student")[0]
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # reproducible from (seed, step, row)
    assert not torch.equal(batch["input_ids"], other["input_ids"])  # a new step draws new samples
    split = op.batches(student, [[0], [3, 5]], rows, step=4, who="student")  # micro-batches: the same samples

    def real(b: dict, r: int) -> list[int]:
        return b["input_ids"][r, : int(b["real"][r].sum())].tolist()

    assert [real(split[0], 0), real(split[1], 0), real(split[1], 1)] == [real(batch, r) for r in range(3)]
    eng = Engine(student, stop_token_ids(pair["tok"]), 3, pair["tok"].pad_token_id)
    for r, i in enumerate([0, 3, 5]):
        (prompt,) = prompts_of(rows[i])
        n = int(batch["real"][r].sum())
        ids, labels = batch["input_ids"][r, :n].tolist(), batch["labels"][r, :n].tolist()
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE] * len(prompt)
        completion = ids[len(prompt) :]
        assert labels[len(prompt) :] == completion and 1 <= len(completion) <= 7
        seed = _seed(42, 4, i, 0)
        (out,) = eng.generate([Request(prompt, 6, 1.0, 1.0, seed)])
        assert completion[: len(out.tokens)] == out.tokens  # what the student itself samples with that seed
    assert op.count(batch) == sum(int((batch["labels"][r, 1:] != IGNORE).sum()) for r in range(3))


def test_each_sampling_sees_the_students_current_weights(pair: dict) -> None:
    import copy

    op, rows = _op(pair, temperature=0.05), pair["rows"]
    student = copy.deepcopy(pair["student"])
    before = op.batches(student, [[1, 2, 7, 8]], rows, step=0, who="student")[0]
    with torch.no_grad():  # what an optimiser step does, to weights the fast path keeps fused copies of
        for layer in student.model.layers:
            for w in (layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.self_attn.q_proj.weight):
                w.add_(torch.randn_like(w) * 3)
    after = op.batches(student, [[1, 2, 7, 8]], rows, step=0, who="student")[0]
    assert not torch.equal(before["input_ids"], after["input_ids"])
    fresh = _op(pair, temperature=0.05).batches(student, [[1, 2, 7, 8]], rows, step=0, who="student")[0]
    assert all(torch.equal(after[k], fresh[k]) for k in after)  # no stale fused weights from the first sampling


def test_teacher_samples_for_seq_kd_and_end_of_turn_is_learned(pair: dict) -> None:
    op, rows, tok = _op(pair, temperature=1e-3, max_new_tokens=12), pair["rows"], pair["tok"]
    (batch,) = op.batches(pair["student"], [list(range(12))], rows, step=0, who="teacher")
    greedy = Engine(pair["teacher"], stop_token_ids(tok), 12, tok.pad_token_id)
    prompts = [prompts_of(r)[0] for r in rows]
    want = greedy.generate([Request(p, 12) for p in prompts])
    for r, (prompt, w) in enumerate(zip(prompts, want, strict=True)):
        n = int(batch["real"][r].sum())
        completion = batch["input_ids"][r, len(prompt) : n].tolist()
        assert w.finish == "stop" and completion == [*w.tokens, op.end_id]  # the teacher's answer, then its end
    texts = [tok.decode(w.tokens, skip_special_tokens=True).strip() for w in want]
    assert sum(t == f"Answer: {a}" for t, (_, a) in zip(texts, QUESTIONS, strict=True)) >= 6  # the teacher's, not noise


def test_packed_rows_give_one_prompt_per_example(pair: dict) -> None:
    rows = pair["rows"]
    packed = pack(rows[:6], 64)
    got = [p for r in packed for p in prompts_of(r)]
    assert sorted(got) == sorted(p for r in rows[:6] for p in prompts_of(r)) and len(got) == 6  # packing reorders


def test_lora_sampler_is_the_adapted_model(pair: dict) -> None:
    import copy

    from potstill.config import LoraSpec
    from potstill.train.stage import with_lora

    model = with_lora(copy.deepcopy(pair["student"]), LoraSpec(r=4, dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # adapters that change the outputs
    sampler = _Sampler(model, 64)
    assert sampler.plain is not None  # the fast path's plain copy, not the generic loop
    ids = torch.tensor([pair["rows"][0].input_ids])
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = sampler.current()(input_ids=ids).logits
        base = model.get_base_model()
        with model.disable_adapter():
            plain_base = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain_base, atol=1e-3)  # the adapters count
    assert all(not p.requires_grad for p in sampler.plain.parameters())
    assert sum(p.requires_grad for p in model.parameters()) > 0  # the trained model is untouched


def test_plot_shows_on_policy_share_and_teacher_scored_divergence() -> None:
    plain = [{"step": s, "loss": 1.0 / s} for s in range(1, 11)]
    mixed = [{"step": s, "loss": 0.5, "on_policy": s % 2, **({"gkd": 0.1 * s} if s % 2 else {})} for s in range(1, 11)]
    assert on_policy_series(plain) is None
    share, gkd = on_policy_series(mixed)
    assert share[0] == (1, 1.0) and share[-1] == (10, 0.5) and gkd == [(s, 0.1 * s) for s in range(1, 11, 2)]

    def height(png: bytes) -> int:
        return int.from_bytes(png[20:24], "big")  # the PNG header's IHDR height

    assert height(loss_plot(mixed)) > height(loss_plot(plain))  # a second panel


def test_sharded_training_is_refused_at_once(pair: dict) -> None:
    from types import SimpleNamespace

    from potstill.errors import TrainingError
    from potstill.train.trainer import FitConfig, fit

    with pytest.raises(TrainingError, match="not supported yet: train with DDP"):
        fit(pair["student"], pair["rows"], [], FitConfig(), 0, dist=SimpleNamespace(sharded=True), on_policy=_op(pair))


def test_the_teacher_scores_after_the_prompt_it_was_asked_with(pair: dict) -> None:
    from potstill.train.kd import model_inputs
    from potstill.train.losses import generalized_jsd

    asked = _with_system(pair)
    op, rows, student, teacher = _op(pair, asked), pair["rows"], pair["student"], pair["teacher"]
    (batch,) = op.batches(student, [[0, 4, 9]], rows, step=2, who="student")
    plain = _op(pair).batches(student, [[0, 4, 9]], rows, step=2, who="student")[0]
    assert torch.equal(batch["input_ids"], plain["input_ids"])  # the student samples after its own prompt
    with torch.no_grad():
        out = student(**model_inputs(batch))
        got = op.loss_sum(out, batch, {})
        want = torch.zeros(())
        for r, i in enumerate([0, 4, 9]):
            mine, theirs = prompts_of(rows[i])[0], asked[tuple(prompts_of(rows[i])[0])]
            n = int(batch["real"][r].sum())
            completion = batch["input_ids"][r, len(mine) : n].tolist()
            assert batch["t_shift"][r] == len(theirs) - len(mine) > 0
            t_logits = teacher(input_ids=torch.tensor([theirs + completion])).logits[0, len(theirs) - 1 : -1]
            s_logits = out.logits[r, len(mine) - 1 : n - 1]
            ones = torch.ones(len(completion), dtype=torch.bool)
            want += generalized_jsd(s_logits, t_logits, ones, 0.5, 1.0, "sum")
        assert float(got) == pytest.approx(float(want), rel=1e-5)
        assert float(op.loss_sum(out, plain, {})) != pytest.approx(float(got), rel=1e-3)  # the context matters
    (seq,) = _op(pair, asked, temperature=1e-3).batches(student, [[0, 4, 9]], rows, step=2, who="teacher")
    greedy = Engine(teacher, stop_token_ids(pair["tok"]), 3, pair["tok"].pad_token_id)
    firsts = [greedy.generate([Request(asked[tuple(prompts_of(rows[i])[0])], 1)])[0].tokens[0] for i in [0, 4, 9]]
    starts = [seq["input_ids"][r, len(prompts_of(rows[i])[0])].item() for r, i in enumerate([0, 4, 9])]
    assert starts == firsts  # seq_kd: the teacher answers after its own prompt


def test_the_stage_finds_the_prompt_the_teacher_was_asked_with(tiny_models: dict, tmp_path: Path) -> None:
    from conftest import job_dict

    from potstill.pipeline import run_pipeline
    from potstill.train.stage import encode_split, teacher_prompts

    d = job_dict(tiny_models, tmp_path / "data")
    spec = validate_spec(d)
    rd = run_pipeline(spec, tmp_path / "run", only=["generate", "validate"])
    tok = load_tokenizer(str(tiny_models["student"]))
    asked = teacher_prompts(encode_split(spec, rd.data / "train.jsonl", tok, False, asked=True)[0])
    assert len(asked) == len(QUESTIONS)
    for mine, theirs in asked.items():
        assert "Answer." not in tok.decode(list(mine)) and "<|system|>\nAnswer." in tok.decode(theirs)
        assert tok.decode(theirs).endswith(tok.decode(list(mine)).split("<|user|>")[-1])
