"""The job spec's remote teachers (kind: openai, azure_openai); config.py joins them into TeacherSpec.

Secrets are never fields: the spec names the environment variables that hold them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .config_errors import _Strict


class _RemoteTeacher(_Strict):
    """What every HTTP teacher shares: speed, retries, money. Secrets are named by variable, never written."""

    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="its name under teachers: (rows record it)"
    )
    headers: dict[str, str] = Field({}, description="extra HTTP headers (no secrets: this goes to job.yaml)")
    headers_env: dict[str, str] = Field({}, description="header name -> NAME of the env variable holding its value")
    extra_body: dict[str, Any] = Field({}, description="extra JSON fields merged into every request body")
    timeout_s: float = Field(180, gt=0, le=3600, description="per-request timeout")
    max_retries: int = Field(6, ge=0, le=100, description="retries per row on 408/409/429/5xx, timeouts, resets")
    retry_backoff_s: float = Field(0.5, gt=0, le=60, description="first back-off; doubles per retry, with jitter")
    max_backoff_s: float = Field(30, gt=0, le=600, description="cap on one back-off (Retry-After up to 60 s wins)")
    concurrency: int | None = Field(
        None, ge=1, le=4096, description="requests in flight per server; default generation.concurrency"
    )
    server_n: bool = Field(False, description="ask for all samples of a prompt in one request with `n`")
    input_price_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens")
    output_price_per_mtok: float | None = Field(None, ge=0, description="USD per million completion tokens")
    budget_usd: float | None = Field(None, gt=0, description="stop cleanly before this much is spent (resumable)")
    min_success_ratio: float = Field(
        0.7, ge=0, le=1, description="the stage fails when fewer rows than this share get an answer"
    )

    @model_validator(mode="after")
    def _budget_needs_prices(self) -> _RemoteTeacher:
        if self.budget_usd is not None and (self.input_price_per_mtok is None or self.output_price_per_mtok is None):
            raise ValueError("budget_usd needs input_price_per_mtok and output_price_per_mtok (USD per 1M tokens)")
        return self


class OpenAITeacher(_RemoteTeacher):
    """Any OpenAI-compatible /v1/chat/completions: OpenAI, Azure AI Foundry, vLLM, SGLang, TGI, Ollama, llama.cpp."""

    kind: Literal["openai"] = "openai"
    model: str = Field(description="the model name the server expects")
    base_url: str | list[str] = Field(
        "https://api.openai.com/v1", description="…/v1 of one server, or a list to spread the load over"
    )
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="NAME of the env variable holding the key; none: no auth"
    )

    @property
    def urls(self) -> list[str]:
        bases = [self.base_url] if isinstance(self.base_url, str) else self.base_url
        return [b.rstrip("/") + "/chat/completions" for b in bases]

    @field_validator("base_url")
    @classmethod
    def _some_url(cls, v: str | list[str]) -> str | list[str]:
        for u in [v] if isinstance(v, str) else v:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"base_url must start with http:// or https:// (got {u!r})")
        if isinstance(v, list) and not v:
            raise ValueError("base_url list is empty")
        return v


class AzureOpenAITeacher(_RemoteTeacher):
    """An Azure OpenAI deployment: key (api-key header) or Azure AD token (Bearer), both from env variables."""

    kind: Literal["azure_openai"] = "azure_openai"
    endpoint: str | list[str] = Field(description="https://<resource>.openai.azure.com, or a list of them")
    deployment: str = Field(description="the deployment name (also the model name in the cache key)")
    api_version: str = Field("2024-10-21", description="the api-version query parameter")
    api_key_env: str | None = Field(
        "AZURE_OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="NAME of the key's env variable"
    )
    ad_token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="NAME of an env variable with an Azure AD token"
    )

    @property
    def model(self) -> str:
        return self.deployment

    @property
    def urls(self) -> list[str]:
        eps = [self.endpoint] if isinstance(self.endpoint, str) else self.endpoint
        return [
            f"{e.rstrip('/')}/openai/deployments/{self.deployment}/chat/completions?api-version={self.api_version}"
            for e in eps
        ]
