"""Synthetic chunk rows for search benchmarks and tests: clustered vectors and words that go with
them, in a chunk table's own schema, made fast enough for a million rows in seconds.

Real embeddings have few effective dimensions: a sentence's vector lies near a low-dimensional
subspace, in clumps of related texts. So each row here belongs to one of `clusters` topics: a
point of a `latent`-dimensional Gaussian around its topic's centre, projected into `dimension`
floats by one fixed random matrix, plus a little noise in every dimension, then normalised
(uniform random vectors would make every row about as far as every other, and nearest
neighbours meaningless). Its text is TOPIC_WORDS words of its topic's vocabulary and
COMMON_WORDS of a shared, Zipf-distributed one, so BM25 has rare and frequent words to weigh.
Queries drawn the same way (`query_vectors`, `topic_words`) are held out: no row equals one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

_SYLLABLES = [
    "ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "we",
    "ba", "de", "fi", "go", "hu", "ja", "ke", "li", "mo", "ny",
]  # fmt: skip
TOPIC_VOCABULARY = 12  # words of each topic's own
COMMON_VOCABULARY = 2000  # words every topic shares
TOPIC_WORDS, COMMON_WORDS = 4, 8  # per row


def word(i: int) -> str:
    """A made-up word, one per number: syllables in base 20 (kalo, mika, ...), never a stop
    word nor stemmed into another."""
    syllables = []
    while True:
        syllables.append(_SYLLABLES[i % 20])
        i //= 20
        if i == 0:
            break
    return "z" + "".join(syllables)  # z: no English word starts like these, nothing stems


@dataclass
class SyntheticCorpus:
    """A generator of chunk rows and of queries that fall among them (see the module's text)."""

    dimension: int
    clusters: int = 1000
    latent: int = 24
    spread: float = 0.6  # of a row around its topic's centre, against centres ~N(0, 1)
    noise: float = 0.05  # in every dimension, against a projected signal of norm ~1
    seed: int = 0
    _centres: np.ndarray = field(init=False, repr=False)
    _projection: np.ndarray = field(init=False, repr=False)
    _words: list[str] = field(init=False, repr=False)
    _zipf: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._centres = rng.normal(size=(self.clusters, self.latent)).astype(np.float32)
        self._projection = (
            rng.normal(size=(self.latent, self.dimension)) / np.sqrt(self.latent)
        ).astype(np.float32)
        # The common words first, then each topic's TOPIC_VOCABULARY in turn.
        self._words = [word(i) for i in range(COMMON_VOCABULARY + self.clusters * TOPIC_VOCABULARY)]
        weights = 1.0 / np.arange(1, COMMON_VOCABULARY + 1)
        self._zipf = weights / weights.sum()

    def topic_words(self, topic: int) -> list[str]:
        """The words of one topic (none of them is a common word)."""
        first = COMMON_VOCABULARY + topic * TOPIC_VOCABULARY
        return self._words[first : first + TOPIC_VOCABULARY]

    def vectors(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One unit vector per topic of `topics`, float32."""
        latent = self._centres[topics] + self.spread * rng.normal(
            size=(len(topics), self.latent)
        ).astype(np.float32)
        out = latent @ self._projection
        out += self.noise * rng.normal(size=out.shape).astype(np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    def texts(self, topics: np.ndarray, rng: np.random.Generator) -> list[str]:
        """One text per topic of `topics`: its topic's words and common ones."""
        own = rng.integers(0, TOPIC_VOCABULARY, size=(len(topics), TOPIC_WORDS))
        own += (COMMON_VOCABULARY + topics * TOPIC_VOCABULARY)[:, None]
        common = rng.choice(COMMON_VOCABULARY, size=(len(topics), COMMON_WORDS), p=self._zipf)
        words = self._words
        return [" ".join(words[i] for i in row) for row in np.concatenate([common, own], axis=1)]

    def rows(self, schema: pa.Schema, start: int, count: int) -> pa.Table:
        """Rows `start` .. `start + count` of the corpus in `schema` (a chunk table's): ids
        r<n>, four chunks per document d<n // 4>, one source per 100 documents, topic
        (n * 7919) % clusters; the same rows for the same arguments."""
        rng = np.random.default_rng((self.seed, start))
        numbers = np.arange(start, start + count)
        topics = (numbers * 7919) % self.clusters
        vectors = self.vectors(topics, rng)
        texts = self.texts(topics, rng)
        now = datetime.now(UTC)
        doc_ids = [f"d{n // 4}" for n in numbers]
        columns = {
            "id": [f"r{n}" for n in numbers],
            "doc_id": doc_ids,
            "chunk_index": pa.array(numbers % 4, pa.int32()),
            "text": texts,
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel(), pa.float32()), self.dimension
            ),
            "token_count": pa.array(np.full(count, TOPIC_WORDS + COMMON_WORDS), pa.int32()),
            "char_start": pa.array(np.zeros(count, dtype=np.int64)),
            "char_end": pa.array([len(t) for t in texts], pa.int64()),
            "content_hash": doc_ids,
            "source": [f"s{n // 400}.txt" for n in numbers],
            "metadata": [json.dumps({"topic": int(t)}) for t in topics],
            "job_id": ["synthetic"] * count,
            "model": ["synthetic"] * count,
            "created_at": pa.array([now] * count, pa.timestamp("us", tz="UTC")),
        }
        return pa.table(columns, schema=schema)

    def queries(self, count: int, seed: int = 1) -> tuple[np.ndarray, list[str], np.ndarray]:
        """`count` held-out queries: (vectors, texts of three of their topic's words, topics)."""
        rng = np.random.default_rng((self.seed, seed, 0))  # three numbers: no rows batch's seed
        topics = rng.integers(0, self.clusters, size=count)
        texts = [" ".join(rng.choice(self.topic_words(int(t)), 3)) for t in topics]
        return self.vectors(topics, rng), texts, topics
