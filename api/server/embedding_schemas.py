"""Request and response schemas of POST /v1/embeddings, shaped as OpenAI's embeddings API so
that OpenAI's own clients work against it unchanged."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from embedscale.engine.models.registry import DEFAULT_MODEL
from embedscale.jobs.textcheck import NameStr, Utf8Str, check_utf8

MAX_INPUTS = 2048  # per request, as OpenAI's own limit
# Characters of one input and of a request: bounds on what one request can make a worker
# tokenize (a 256-token input of the default model is about 1,000-5,000 characters). The
# model's token limit itself is checked on the worker, with the model's own tokenizer.
MAX_INPUT_CHARS = 20_000
MAX_REQUEST_CHARS = 4_000_000


def _texts(value: Any) -> list[str]:
    """The input as a list of texts, or ValueError saying which element is wrong and why."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise ValueError(f"must be a string or a list of strings, not {type(value).__name__}")
    if not texts:
        raise ValueError("is an empty list: send at least one text")
    if len(texts) > MAX_INPUTS:
        raise ValueError(f"has {len(texts)} texts; send at most {MAX_INPUTS} a request")
    total = 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            token_ids = isinstance(text, int) or (
                isinstance(text, list) and all(isinstance(t, int) for t in text)
            )
            raise ValueError(
                f"input[{i}] is {type(text).__name__}: "
                + (
                    "token ids are not accepted (they are another tokenizer's); send text"
                    if token_ids
                    else "send a string or a list of strings"
                )
            )
        if not text:
            raise ValueError(f"input[{i}] is an empty string: send text to embed")
        if len(text) > MAX_INPUT_CHARS:
            raise ValueError(
                f"input[{i}] has {len(text)} characters; at most {MAX_INPUT_CHARS} are accepted"
            )
        total += len(text)
        if total > MAX_REQUEST_CHARS:
            raise ValueError(
                f"the texts up to input[{i}] have {total} characters; send at "
                f"most {MAX_REQUEST_CHARS} a request"
            )
        try:
            check_utf8(text)
        except ValueError as exc:
            raise ValueError(f"input[{i}]: {exc}") from None
    return texts


class EmbeddingCreate(BaseModel):
    """OpenAI's embeddings request: the texts, the model, how vectors are written."""

    model_config = ConfigDict(extra="forbid")

    model: NameStr = Field(
        min_length=1,
        max_length=512,
        examples=[DEFAULT_MODEL],
        description="the default model, or one the service allows",
    )
    input: str | list[str] = Field(
        description=(
            f"a text or a list of up to {MAX_INPUTS} texts, each one within the model's token "
            "limit (longer ones are refused, never truncated)"
        )
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes"
    )
    dimensions: int | None = Field(
        None, gt=0, strict=True, description="the model's own dimension (no other is made)"
    )
    user: Utf8Str | None = Field(None, max_length=256, description="accepted and ignored")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        _texts(value)
        return value

    def texts(self) -> list[str]:
        """The input as a list, a single string as a list of one."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingOut(BaseModel):
    """One input's vector: a list of floats, or (base64) a string of float32 bytes."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    """Tokens the model read, special tokens included (as jobs count them)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """OpenAI's embeddings response."""

    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsage


class OpenAIErrorBody(BaseModel):
    """What went wrong, as OpenAI writes it."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """An error answer of the OpenAI-compatible routes."""

    error: OpenAIErrorBody
