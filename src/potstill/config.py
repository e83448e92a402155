"""The job spec: pydantic models of job.yaml, and the loader that reports every problem at once.

    spec = load_spec("job.yaml")          # -> JobSpec, paths resolved against the file's folder
    JobSpec.model_validate(dict)          # the same rules from Python

Every model forbids unknown fields; a typo is reported with the closest valid name and, for YAML, the line.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .config_errors import _Strict, format_problems, suggest, yaml_lines
from .config_remote import AzureOpenAITeacher, OpenAITeacher
from .config_teachers import NAME_PATTERN, TeachingSpec, teachers_problems, teaching_problems
from .config_tune import TuneSpec, tune_problems
from .errors import ConfigError
from .filter_spec import FILTER_NAMES, filter_options

TaskType = Literal["nli", "qa", "math", "conversation", "summarization"]
TASK_TYPES: tuple[str, ...] = typing.get_args(TaskType)


# --------------------------------------------------------------------------------------------- teacher
class HFTeacher(_Strict):
    """A local Hugging Face causal LM (hub id or folder) used as the teacher."""

    kind: Literal["hf"] = "hf"
    name: str | None = Field(None, pattern=NAME_PATTERN, description="its name under teachers: (rows record it)")
    model: str = Field(description="hub id or local folder of the teacher checkpoint")
    tokenizer: str | None = Field(None, description="tokenizer id/folder when it differs from `model`")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(16, ge=1, le=4096, description="prompts per generate() call")
    input_price_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens (its compute)")
    output_price_per_mtok: float | None = Field(None, ge=0, description="USD per million completion tokens")


TeacherSpec = Annotated[Union[HFTeacher, OpenAITeacher, AzureOpenAITeacher], Field(discriminator="kind")]  # noqa: UP007


# --------------------------------------------------------------------------------------------- student
class LoraSpec(_Strict):
    r: int = Field(16, ge=1, le=1024, description="adapter rank")
    alpha: float = Field(32, gt=0, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(None, description="default: all attention and MLP projections")
    quantize: Literal["4bit", "8bit"] | None = Field(
        None, description="QLoRA: load the frozen base in 4 or 8 bits (needs CUDA and bitsandbytes)"
    )


class StudentSpec(_Strict):
    model: str = Field(description="hub id or local folder of the student to start from")
    tokenizer: str | None = None
    lora: LoraSpec | None = Field(None, description="omit for full fine-tuning")
    device: str = "auto"


# --------------------------------------------------------------------------------------------- data
class DataSpec(_Strict):
    training: Path = Field(description="chat JSONL or {prompt, answer} JSONL the teacher answers")
    validation: Path = Field(description="validation prompts (teacher-answered; validation loss and eval)")
    test: Path | None = Field(None, description="held-out rows with references for evaluation")


class PromptSpec(_Strict):
    system: str | None = Field(None, description="system prompt for the teacher; default: the task's")
    template: str | None = Field(
        None,
        description="user-message template over a row's fields, e.g. 'Q: {question}' (rows given as fields, "
        "not chat rows); default: the row format's own",
    )
    max_words: int = Field(80, ge=1, le=100000, description="summarization: the summary's word limit in the prompt")
    answer_marker: str | None = Field(
        None,
        description="where the teacher's answer starts, e.g. 'Verdict:': the text after its last occurrence is the "
        "answer (the task reads its number, label or letter); tried before the task's own parser, everywhere "
        "answers are read (validation, answer_check, self-consistency, evaluation)",
    )

    @field_validator("answer_marker")
    @classmethod
    def _marker_has_text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("answer_marker must hold some text, e.g. 'Verdict:' or 'Final count:'")
        return v


class GenerationSpec(_Strict):
    temperature: float | None = Field(
        None, ge=0, le=2, description="teacher sampling temperature; default hyperparameters.temperature"
    )
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, le=131072)
    samples: int = Field(1, ge=1, le=64, description="answers per prompt (self-consistency)")
    chain_of_thought: bool = Field(False, description="ask the teacher to reason, then give a parseable answer")
    cot: Literal["keep", "drop", "multitask"] = Field(
        "keep",
        description="what the student learns from a reasoned output: keep (reasoning + answer), drop (the answer "
        "only) or multitask (separate '[rationale]' and '[answer]' targets, distilling step-by-step)",
    )
    concurrency: int = Field(16, ge=1, le=4096)
    seed: int = 0
    stop: list[str] | None = None
    logprobs: int | None = Field(
        None, ge=1, le=20, description="keep the teacher's top-k token logprobs per position (logit distillation)"
    )


# --------------------------------------------------------------------------------------------- training
class KDSpec(_Strict):
    """Token-level logit distillation, mixed with the cross-entropy on the teacher's text."""

    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="the divergence")
    temperature: float | None = Field(
        None, gt=0, le=20, description="soft-target temperature; default hyperparameters.temperature"
    )
    alpha: float = Field(0.5, ge=0, le=1, description="loss = (1 - alpha) * CE + alpha * KD")
    beta: float = Field(0.5, gt=0, lt=1, description="jsd only: m = beta * teacher + (1 - beta) * student")
    source: Literal["teacher", "logprobs"] = Field(
        "logprobs",
        description="teacher: a local HF teacher's forward pass; logprobs: top-k captured at generation time",
    )


class HiddenSpec(_Strict):
    """Match student hidden states to the teacher's through a learned linear projection."""

    loss: Literal["mse", "cosine"] = "mse"
    weight: float = Field(1.0, gt=0, le=1000, description="added to the loss as weight * hidden_loss")
    layer_map: dict[int, int] | None = Field(
        None, description="student layer -> teacher layer (hidden_states index, 0 = embeddings); default: last"
    )


class OnPolicySpec(_Strict):
    """On-policy distillation (GKD, Agarwal et al. 2024): some steps train on completions the student samples
    itself, scored token by token by the teacher (docs/training.md#on-policy-distillation)."""

    lmbda: float = Field(
        0.5, ge=0, le=1, description="probability that a step's completions are sampled from the current student"
    )
    beta: float = Field(
        0.5, ge=0, le=1, description="generalised JSD, TRL's convention: 0 = forward KL(teacher‖student), 1 = reverse"
    )
    temperature: float = Field(
        0.9, gt=0, le=2, description="sampling temperature, also the softmax temperature of the divergence"
    )
    max_new_tokens: int = Field(128, ge=1, le=131072, description="longest sampled completion")
    seq_kd: bool = Field(False, description="the other steps train on completions the teacher samples (local teacher)")
    after_steps: int = Field(0, ge=0, description="optimiser steps of plain training (an SFT warm-up) first")
    top_logprobs: int = Field(
        20, ge=1, le=100, description="OpenAI-compatible teachers: prompt logprobs per position (top-k scoring)"
    )


class Hyperparameters(_Strict):
    learning_rate: float = Field(2e-5, gt=0, le=1, description="peak learning rate (1e-5..5e-5 for LLMs)")
    batch_size: int = Field(2, ge=1, le=65536, description="examples per optimiser step and process")
    num_epochs: float = Field(3, gt=0, le=1000, description="passes over the kept teacher outputs")
    temperature: float = Field(
        0.7, gt=0, le=20, description="distillation temperature: KD soft targets; teacher sampling default"
    )
    max_steps: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None,
        description="stop after this many optimiser steps; auto: when the validation metric stops improving "
        "(needs max_minutes; docs/training.md)",
    )
    max_minutes: float | None = Field(None, gt=0, description="stop training after this many minutes")
    data_share: float | None = Field(
        None, gt=0, le=1, description="train on this share of the kept teacher outputs (a subset drawn with seed)"
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    grad_accum_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    max_seq_len: int = Field(1024, ge=8)
    eval_every: int | None = Field(None, ge=1, description="validation loss every N steps (and each epoch)")
    save_every: int = Field(50, ge=1, description="checkpoint every N steps (resume after a crash)")
    seed: int = 42
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many validations without improvement (None: never stop early)"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0, description="an improvement must beat the best by this")
    packing: bool = Field(False, description="pack short examples into rows of up to max_seq_len tokens")
    group_by_length: bool = Field(
        False, description="batch rows of similar length together (less padding; batches still shuffled)"
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else fp16 on a GPU, fp32 on CPU"
    )
    kd: KDSpec | None = Field(None, description="logit distillation; omit for plain SFT on the teacher's text")
    hidden: HiddenSpec | None = Field(None, description="intermediate-layer matching (needs a local teacher)")
    on_policy: OnPolicySpec | None = Field(
        None, description="on-policy distillation: train on the student's own samples, scored by the teacher"
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        [], description="also send the curves to these trackers (logs/events.jsonl always has them)"
    )

    @field_validator("max_steps", mode="before")
    @classmethod
    def _steps_or_auto(cls, v: Any) -> Any:
        whole = isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() and v >= 1
        if v is None or v == "auto" or whole:
            return v
        raise ValueError("a whole number of optimiser steps (1 or more), or auto")

    @model_validator(mode="after")
    def _auto_needs_a_cap(self) -> Hyperparameters:
        if self.max_steps == "auto" and self.max_minutes is None:
            raise ValueError(
                "max_steps: auto trains until the validation metric stops improving; give max_minutes too (the "
                "time cap), e.g. max_minutes: 30"
            )
        return self


# --------------------------------------------------------------------------------------------- evaluation
RESERVED_MODEL_NAMES = ("teacher", "baseline", "distilled")


class ExtraModel(_Strict):
    """Another local model evaluated beside the others, e.g. the student trained on gold data only."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="its row name (file-safe)")
    model: str = Field(description="hub id or local folder (e.g. a previous run's student/)")
    tokenizer: str | None = Field(None, description="tokenizer id/folder when it differs from `model`")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_MODEL_NAMES:
            raise ValueError(f"{v!r} is taken by a built-in row; pick another name")
        return v


class EvaluationSpec(_Strict):
    metrics: list[Literal["accuracy", "bleu", "rouge", "latency", "memory"]] = Field(["accuracy", "latency", "memory"])
    baseline: bool = Field(True, description="also evaluate the untouched student")
    teacher: bool = Field(True, description="also evaluate the teacher")
    models: list[ExtraModel] = Field([], description="extra local models to evaluate: [{name, model, tokenizer?}]")
    max_new_tokens: int = Field(128, ge=1)
    max_examples: int | None = Field(None, ge=1, description="cap on scored rows")
    latency_samples: int = Field(16, ge=1, description="prompts timed one at a time (batch 1)")
    batch_size: int = Field(16, ge=1, description="batch size for scoring and throughput")
    bootstrap_samples: int = Field(
        1000, ge=0, le=100_000, description="resamples for the 95% bootstrap CIs (0: Wilson intervals only)"
    )
    seed: int = Field(0, description="seed of the bootstrap resampling")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[ExtraModel]) -> list[ExtraModel]:
        names = [m.name for m in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"two extra models are named {dup!r}; names must be unique")
        return v


# --------------------------------------------------------------------------------------------- job


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    task_type: TaskType
    teachers: list[TeacherSpec] | None = Field(None, description="several named teachers (docs/teachers.md)")
    teacher: TeacherSpec | None = Field(None, validate_default=True, description="the teacher (or teachers:)")
    student: StudentSpec
    data: DataSpec
    prompts: PromptSpec = PromptSpec()
    generation: GenerationSpec = GenerationSpec()
    filters: list[str | dict[str, Any]] = Field(["nonempty", "parse", "max_tokens"])
    hyperparameters: Hyperparameters = Hyperparameters()
    teaching: TeachingSpec | None = Field(
        None, validate_default=True, description="with several teachers: route | cascade | pool (docs/teachers.md)"
    )
    evaluation: EvaluationSpec = EvaluationSpec()
    tune: TuneSpec | None = Field(None, description="what `potstill tune` searches (docs/tuning.md)")

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_shorthand(cls, v: Any) -> Any:
        return {"kind": "hf", "model": v} if isinstance(v, str) else v

    @field_validator("teachers")
    @classmethod
    def _named_teachers(cls, v: list[Any] | None) -> list[Any] | None:
        if v is not None and (problems := teachers_problems(v)):
            raise ValueError("; ".join(problems))
        return v

    @field_validator("teacher")
    @classmethod
    def _one_or_several(cls, v: Any, info: ValidationInfo) -> Any:
        if "teachers" not in info.data:  # teachers: was given and has problems of its own
            return v
        several = info.data["teachers"] is not None
        if v is None and not several:
            raise PydanticCustomError("missing", "required field is missing")
        if v is not None and several:
            raise ValueError("give teacher: (one) or teachers: (several), not both")
        return v

    @field_validator("hyperparameters")
    @classmethod
    def _one_forward_teacher(cls, v: Hyperparameters, info: ValidationInfo) -> Hyperparameters:
        teachers = info.data.get("teachers")
        forward = (v.kd is not None and v.kd.source == "teacher") or v.hidden is not None
        if forward and teachers is not None and len(teachers) > 1:
            raise ValueError(
                "kd.source 'teacher' and hidden run one local teacher beside the student; with several teachers, "
                "distil each row's own teacher's logits with kd.source: logprobs and generation.logprobs: k "
                "(captured as each teacher answers)"
            )
        return v

    @field_validator("teaching")
    @classmethod
    def _teaching_fits(cls, v: Any, info: ValidationInfo) -> Any:
        if "teachers" not in info.data or "task_type" not in info.data:
            return v
        teachers = info.data["teachers"]
        if teachers is None:
            if v is not None:
                raise ValueError("teaching: shares rows among several teachers: list them under teachers:")
            return v
        if v is None:
            if len(teachers) > 1:
                raise PydanticCustomError(
                    "missing_part",
                    "several teachers need teaching: (strategy: route, cascade or pool; docs/teachers.md)",
                )
            return v
        gen, hp = info.data.get("generation"), info.data.get("hyperparameters")
        temp = gen.temperature if gen is not None else None
        temp = temp if temp is not None else (hp or Hyperparameters()).temperature
        names = [t.name for t in teachers]
        if problems := teaching_problems(v, names, info.data["task_type"], temp):
            raise ValueError("; ".join(problems))
        return v

    @field_validator("student", mode="before")
    @classmethod
    def _student_shorthand(cls, v: Any) -> Any:
        return {"model": v} if isinstance(v, str) else v

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        problems = []
        for i, item in enumerate(v):
            pairs = [(item, None)] if isinstance(item, str) else list(item.items())
            for name, arg in pairs:
                if name not in FILTER_NAMES:
                    problems.append(f"unknown filter {name!r}{suggest(name, FILTER_NAMES)}")
                    continue
                try:
                    filter_options(name, arg)
                except ValidationError as exc:
                    for e in exc.errors(include_url=False):
                        field = ".".join(str(x) for x in e["loc"])
                        msg = e["msg"].removeprefix("Value error, ")
                        problems.append(f"filters[{i}].{name}.{field}: {msg} (got {e.get('input')!r})")
                except ValueError as exc:
                    problems.append(f"filters[{i}]: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("hyperparameters")
    @classmethod
    def _on_policy_teacher(cls, v: Hyperparameters, info: ValidationInfo) -> Hyperparameters:
        op, teacher, teachers = v.on_policy, info.data.get("teacher"), info.data.get("teachers")
        if op is not None and teachers is not None and len(teachers) > 1:
            raise ValueError(
                "on_policy scores the student's samples with one teacher; with several teachers (teachers:), keep "
                "one in the list or remove hyperparameters.on_policy"
            )
        teacher = teacher or (teachers[0] if teachers else None)
        if op is None or teacher is None:
            return v
        if teacher.kind == "azure_openai":
            raise ValueError(
                "on_policy needs a teacher that scores given tokens: a local teacher (teacher.kind: hf) with the "
                "student's tokenizer, or an OpenAI-compatible server that returns prompt logprobs (vLLM); Azure "
                "OpenAI returns none — use a local teacher or remove hyperparameters.on_policy"
            )
        if teacher.kind != "hf" and op.seq_kd:
            raise ValueError(
                "on_policy.seq_kd samples from the teacher in the training loop: it needs a local teacher "
                "(teacher.kind: hf); set seq_kd: false to score the student's samples through the server"
            )
        steps = v.max_steps if isinstance(v.max_steps, int) else None  # None or "auto": no fixed end
        if steps is not None and (op.lmbda > 0 or op.seq_kd) and op.after_steps >= steps:
            raise ValueError(
                f"on_policy.after_steps ({op.after_steps}) >= max_steps ({v.max_steps}): no on-policy step would "
                "run; lower after_steps or raise max_steps"
            )
        return v

    @field_validator("tune")
    @classmethod
    def _tune_fits_the_job(cls, v: TuneSpec | None, info: ValidationInfo) -> TuneSpec | None:
        if v is None or "task_type" not in info.data:
            return v
        base: dict[str, Any] | None = None
        if all(k in info.data for k in ("name", "teacher", "student", "data")):
            base = {
                k: x.model_dump(mode="json", exclude_none=True) if hasattr(x, "model_dump") else x
                for k, x in info.data.items()
            }
            try:
                JobSpec.model_validate(base)
            except ValidationError:
                base = None  # the rest of the spec has problems of its own (reported beside these)
        if problems := tune_problems(v, info.data["task_type"], base):
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _sampling(self) -> JobSpec:
        if self.generation.samples > 1 and self.sampling_temperature == 0:
            raise ValueError("generation.samples > 1 needs a temperature above 0 (identical samples otherwise)")
        names = {n for item in self.filters for n in ([item] if isinstance(item, str) else item)}
        if "self_consistency" in names and self.generation.samples < 2:
            raise ValueError("the self_consistency filter needs generation.samples >= 2 (it votes over samples)")
        return self

    @model_validator(mode="after")
    def _distillation(self) -> JobSpec:
        hp = self.hyperparameters
        needs_local = (hp.kd is not None and hp.kd.source == "teacher") or hp.hidden is not None
        if needs_local and self.teacher_list()[0].kind != "hf":
            raise ValueError("hyperparameters.kd.source 'teacher' and hyperparameters.hidden need a local teacher")
        return self

    def teacher_list(self) -> list[TeacherSpec]:
        """Every teacher: ``teachers:``, or ``teacher:`` as a list of one."""
        if self.teachers is not None:
            return list(self.teachers)
        assert self.teacher is not None
        return [self.teacher]

    def named_teachers(self) -> dict[str, TeacherSpec]:
        """Name -> teacher (``teacher:`` is named by its ``name``, else "teacher")."""
        return {t.name or "teacher": t for t in self.teacher_list()}

    def for_teacher(self, name: str) -> JobSpec:
        """This job as if ``name`` were its only teacher: what the one-teacher machinery (the request cache,
        the HTTP engine, the local decoder, evaluation) runs on. Its requests carry the name in their cache key."""
        t = self.named_teachers()[name]
        return self.model_copy(update={"teacher": t, "teachers": None, "teaching": None})

    @property
    def kd_temperature(self) -> float:
        kd = self.hyperparameters.kd
        return self.hyperparameters.temperature if kd is None or kd.temperature is None else kd.temperature

    @property
    def sampling_temperature(self) -> float:
        t = self.generation.temperature
        return self.hyperparameters.temperature if t is None else t

    def resolved(self, base: Path) -> JobSpec:
        """Relative data paths (and local model folders) made absolute against ``base``."""
        spec = self.model_copy(deep=True)
        for field in ("training", "validation", "test"):
            p = getattr(spec.data, field)
            if p is not None and not p.is_absolute():
                setattr(spec.data, field, (base / p).resolve())
        for part in (*spec.teacher_list(), spec.student, *spec.evaluation.models):
            for attr in ("model", "tokenizer"):
                if (val := getattr(part, attr, None)) and (local := _local(val, base)) != val:
                    setattr(part, attr, local)
        for path in ("student.model", "student.tokenizer"):  # a ladder of local students
            entry = spec.tune.space.get(path) if spec.tune is not None else None
            if entry is not None and entry.choices is not None:
                entry.__dict__["choices"] = [_local(c, base) for c in entry.choices]
        return spec

    def public_dict(self) -> dict[str, Any]:
        """The spec as plain data (no secrets live in the spec: keys are named by variable)."""
        return self.model_dump(mode="json", exclude_none=True)


def _local(val: Any, base: Path) -> Any:
    """``val`` made absolute against ``base`` when it names a local folder there."""
    if isinstance(val, str) and _looks_local(val) and (base / val).exists():
        return str((base / val).resolve())
    return val


def _looks_local(val: str) -> bool:
    return val.startswith((".", "/", "~")) or (os.sep in val and not _is_hub_id(val))


def _is_hub_id(val: str) -> bool:
    parts = val.split("/")
    return len(parts) == 2 and all(parts) and not val.startswith((".", "/"))


# --------------------------------------------------------------------------------------------- loading
def load_spec(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a job YAML; raises ConfigError listing every problem with its line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"job file not found: {p} (pass the path of a job YAML, see examples/)")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        lines = yaml_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source=where) from None
    if not isinstance(data, dict):
        raise ConfigError("the job file must be a YAML mapping (name:, task_type:, teacher:, ...)", source=str(p))
    return validate_spec(data, source=str(p), lines=lines).resolved(p.parent.resolve())


def validate_spec(
    data: dict[str, Any], source: str | None = None, lines: dict[tuple[str, ...], int] | None = None
) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_problems(exc, JobSpec, source, lines or {})) from None
