"""The OpenAI-compatible HTTP provider: chunk texts sent to any server speaking the OpenAI
embeddings API (OpenAI, vLLM, TEI, Ollama, Infinity, embedscale's own /v1/embeddings).

Chunking still runs here, on token ids of a local tokenizer (the model's own, or a named one),
so chunk sizes and offsets are what the other providers make; the request carries each chunk's
text. The API key is read from EMBEDSCALE_PROVIDER_API_KEY in the environment of the process
that sends the request (each worker), at each request: it is never part of a spec, a task, a
log line or an error.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from embedscale.engine.errors import ModelError, ProviderError, scrub_message
from embedscale.engine.models.http_policy import (
    CircuitBreaker,
    is_retryable,
    parse_retry_after,
    plan_batches,
    retry_delay,
)
from embedscale.engine.models.info import ModelInfo, hub_offline
from embedscale.engine.models.limits import model_limits
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.models.tokenization import special_affixes

API_KEY_ENV = "EMBEDSCALE_PROVIDER_API_KEY"
REQUEST_TOKENS = 8192  # per request: well under OpenAI's 300k, small enough to retry cheaply
REQUEST_INPUTS = 256  # per request (OpenAI accepts 2048; smaller requests spread over slots)
CONCURRENCY = 4  # requests in flight per worker process, whatever its threads
MAX_ATTEMPTS = 4  # per request: the first try and three retries
BACKOFF_SECONDS = 0.5  # the first retry's wait; doubles each time
BACKOFF_CAP_SECONDS = 30.0  # also caps a server's Retry-After
DEFAULT_MAX_TOKENS = 512  # when the tokenizer's model does not say its own limit
_PROBE = "embedscale dimension probe"


def load_tokenizer(spec: ModelSpec):
    """The fast tokenizer of `spec` (a local folder's tokenizer.json, or a hub id, online),
    without truncation or padding: chunking must see every token."""
    from tokenizers import Tokenizer

    try:
        with hub_offline(spec.local):
            if spec.local:
                tokenizer = Tokenizer.from_file(str(Path(spec.location) / "tokenizer.json"))
            else:
                tokenizer = Tokenizer.from_pretrained(spec.location)
    except Exception as exc:
        raise ModelError(
            f"cannot load the tokenizer of '{spec.name}' from {spec.location}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class OpenAIHTTPModel:
    """A model behind an OpenAI-compatible /embeddings endpoint (EmbeddingModel protocol). Its
    dimension is asked of the endpoint once, when the model is loaded on a worker, so an
    unreachable endpoint or a dimension the table does not hold fails a job before anything
    is written."""

    takes_texts = True  # tasks send chunk texts (embed_chunks), not token ids

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device = "remote"
        self.url = spec.location.rstrip("/") + "/embeddings"
        self.tokenizer = load_tokenizer(spec.tokenizer) if spec.tokenizer else None
        if self.tokenizer is not None:
            self._prefix, self._suffix = special_affixes(self.tokenizer)
            limits = model_limits(spec.tokenizer)
            max_tokens = limits.max_tokens if limits else DEFAULT_MAX_TOKENS
        else:  # queries only (search): nothing is chunked
            self._prefix = self._suffix = np.zeros(0, dtype=np.int64)
            max_tokens = DEFAULT_MAX_TOKENS
        self._http = httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0))
        self._breaker = CircuitBreaker()
        self._breaker_lock = threading.Lock()
        # One pool per model and process: bounds the requests in flight per worker, however
        # many of its threads run partitions.
        self._pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="embedscale-http")
        dimension = self._request([_PROBE]).shape[1]
        self.info = ModelInfo(
            spec.name,
            int(dimension),
            int(max_tokens),
            len(self._prefix) + len(self._suffix),
            provider="openai",
            provider_url=spec.location,
        )

    def wrap(self, content_ids: np.ndarray) -> np.ndarray:
        """The chunk's ids with the tokenizer's special tokens, as the endpoint's model will see
        them (what token counts and limits are measured on)."""
        return np.concatenate([self._prefix, content_ids, self._suffix]).astype(np.int64)

    def embed_token_ids(self, batch: list[np.ndarray]) -> np.ndarray:
        """Not possible over this API: it takes texts (see embed_chunks)."""
        raise ModelError(f"provider 'openai' ({self.spec.name}) embeds texts, not token ids")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed short texts such as search queries."""
        return self.embed_chunks(texts, [1] * len(texts))

    def embed_chunks(self, texts: list[str], token_counts: list[int]) -> np.ndarray:
        """Embed chunk texts, batched by tokens and inputs, `CONCURRENCY` requests at a time;
        float32 [len(texts), dim] in the order given."""
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        batches = plan_batches(token_counts, REQUEST_TOKENS, REQUEST_INPUTS)
        parts = list(self._pool.map(lambda idx: self._request([texts[i] for i in idx]), batches))
        vectors = np.concatenate(parts)
        if vectors.shape[1] != self.info.dimension:
            raise ProviderError(
                f"provider {self.url} returned vectors of {vectors.shape[1]} "
                f"dimensions for model '{self.spec.name}'; it gave "
                f"{self.info.dimension} when the job started"
            )
        return vectors

    def _request(self, texts: list[str]) -> np.ndarray:
        """One request with retries (backoff, honouring Retry-After) behind the breaker."""
        failure = ""
        for attempt in range(MAX_ATTEMPTS):
            with self._breaker_lock:
                if not self._breaker.allows(time.monotonic()):
                    raise ProviderError(
                        f"provider {self.url} failed {self._breaker.failures} times in a row "
                        f"(last: {failure or 'in an earlier request'}); not calling it for "
                        f"{self._breaker.cooldown:.0f} s"
                    )
            retry_after = None
            try:
                response = self._http.post(
                    self.url,
                    json={"model": self.spec.name, "input": texts, "encoding_format": "float"},
                    headers=_auth_headers(),
                )
            except httpx.TransportError as exc:  # refused, reset, timed out, bad name
                failure = f"cannot reach provider {self.url}: {type(exc).__name__}"
            else:
                if response.status_code == 200:
                    vectors = parse_embeddings(response, len(texts), self.url)
                    self._record(True)
                    return vectors
                failure = _describe(self.url, response)
                if not is_retryable(response.status_code, response.headers.get("x-should-retry")):
                    raise ProviderError(failure)  # the same answer would come again
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._record(False)
            if attempt + 1 < MAX_ATTEMPTS:
                time.sleep(retry_delay(attempt, retry_after, BACKOFF_SECONDS, BACKOFF_CAP_SECONDS))
        raise ProviderError(f"{failure} (after {MAX_ATTEMPTS} attempts)")

    def _record(self, ok: bool) -> None:
        with self._breaker_lock:
            self._breaker.record(ok, time.monotonic())


def parse_embeddings(response: httpx.Response, count: int, url: str) -> np.ndarray:
    """The vectors of a 200 answer, in input order (by `index`): float32 [count, dim]. An answer
    with another number of vectors, vectors of unequal length or no embeddings body at all is
    a ProviderError naming the endpoint: a row must never get another chunk's vector."""
    try:
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        vectors = [d["embedding"] for d in data]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderError(
            f"provider {url} answered 200 without an OpenAI embeddings body ({type(exc).__name__})"
        ) from None
    if len(vectors) != count or sorted(d["index"] for d in data) != list(range(count)):
        raise ProviderError(f"provider {url} returned {len(vectors)} vectors for {count} inputs")
    # A base64 string here would be the server ignoring encoding_format="float".
    if (
        not all(isinstance(v, list) for v in vectors)
        or len(lengths := {len(v) for v in vectors}) != 1
        or 0 in lengths
    ):
        raise ProviderError(f"provider {url} returned vectors of unequal or unknown length")
    try:
        return np.asarray(vectors, dtype=np.float32).reshape(count, -1)
    except (ValueError, TypeError):
        raise ProviderError(f"provider {url} returned vectors that are not numbers") from None


def _auth_headers() -> dict[str, str]:
    key = os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _describe(url: str, response: httpx.Response) -> str:
    """An error answer in one line: the status and the server's own message (OpenAI's
    {"error": {"message", "code"}} or FastAPI's {"detail"}), with any key blanked out."""
    message = ""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            if error.get("code"):
                message += f" (code {error['code']})"
        elif isinstance(body, dict) and "detail" in body:
            message = _detail(body["detail"])
    except ValueError:
        message = response.text[:200]
    text = f"provider {url} answered {response.status_code}"
    if message.strip():
        # The endpoint's words may quote the texts it was sent (a tenant's chunks): scrubbed.
        text += f": {scrub_message(message)}"
    if response.status_code == 401:
        text += f" (set {API_KEY_ENV} in the environment of the workers)"
    return redact(text)


def _detail(detail: object) -> str:
    """FastAPI's `detail`: a message, or a list of validation errors whose `input` would echo
    what was sent; only their `msg` is kept."""
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", "")) for d in detail if isinstance(d, dict))
    return str(detail)


def redact(text: str) -> str:
    """`text` with the provider key, if this process has one, replaced by '***'."""
    key = os.environ.get(API_KEY_ENV)
    return text.replace(key, "***") if key and len(key) >= 4 else text
