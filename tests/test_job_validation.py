"""Bad input to the control plane is refused with a message naming the field."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError as PydanticValidationError

from embedscale.engine.chunking.chunker import ChunkSettings
from embedscale.engine.models.limits import model_limits
from embedscale.engine.models.registry import DEFAULT_MODEL, resolve_model
from embedscale.engine.sources.enumeration import plan_texts
from embedscale.engine.sources.file_access import FileAccess
from embedscale.jobs.errors import InvalidFieldError, QuotaExceededError
from embedscale.jobs.service import JobService, tenant_data_dir
from embedscale.jobs.spec import JobSpec, check_source_allowed
from embedscale.jobs.tenants.quotas import estimate_chunks, resets_at
from embedscale.jobs.token_density import chars_per_token


def field_error(spec: dict) -> tuple[str, str]:
    with pytest.raises(PydanticValidationError) as err:
        JobSpec.model_validate(spec)
    first = err.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


@pytest.mark.parametrize(
    "spec,field,message",
    [
        ({"table": "t", "source": "x", "priority": "urgent"}, "priority", "'low', 'normal'"),
        ({"table": "t", "source": "x", "mode": "merge"}, "mode", "'append', 'overwrite'"),
        ({"table": "t", "source": "x", "chunk_tokens": -5}, "chunk_tokens", "greater than 0"),
        ({"table": "t", "source": "x", "overlap_tokens": -1}, "overlap_tokens", "greater than or"),
        ({"table": "../x", "source": "x"}, "table", "invalid table name"),
        ({"table": "a/b", "source": "x"}, "table", "invalid table name"),
        ({"table": "", "source": "x"}, "table", "invalid table name"),
        ({"table": "t", "source": "x", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_bad_fields_are_named(spec, field, message):
    loc, msg = field_error(spec)
    assert loc == field and message in msg


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            {"table": "t", "source": "x", "chunk_tokens": 64, "overlap_tokens": 64},
            "overlap_tokens=64",
        ),
        ({"table": "t"}, "exactly one of 'source'"),
        ({"table": "t", "source": "x", "texts": ["a"]}, "exactly one of 'source'"),
        ({"table": "t", "texts": []}, "'texts' is empty"),
        ({"table": "t", "texts": ["a", "b"], "ids": ["1"]}, "'ids' has 1 entries"),
        ({"table": "t", "texts": ["a", "b"], "ids": ["1", "1"]}, "not unique"),
    ],
)
def test_inconsistent_specs_are_refused(spec, message):
    assert message in field_error(spec)[1]


def test_sources_outside_the_allowed_roots_are_refused(tmp_path):
    root = tmp_path / "allowed"
    (root / "docs").mkdir(parents=True)
    assert check_source_allowed(str(root / "docs"), [str(root)]) == str(root / "docs")
    assert check_source_allowed(str(root / "docs" / "*.txt"), [str(root)])
    for bad in [str(tmp_path), str(root / ".." / "elsewhere"), "/etc/passwd"]:
        with pytest.raises(InvalidFieldError) as err:
            check_source_allowed(bad, [str(root)])
        assert err.value.field == "source"
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidFieldError):
        check_source_allowed(str(root / "link"), [str(root)])
    with pytest.raises(InvalidFieldError, match="accepts no source paths"):
        check_source_allowed(str(root), [])
    assert check_source_allowed("/anything", None) == "/anything"


def test_unknown_tier_and_tenant_names(tmp_path):
    service = JobService(tmp_path)
    with pytest.raises(InvalidFieldError, match="unknown tier 'gold'") as err:
        service.create_tenant("acme", "gold")
    assert err.value.field == "tier"
    for name in ["../x", "", "Upper", "a/b"]:
        with pytest.raises(InvalidFieldError) as err:
            service.create_tenant(name, "free")
        assert err.value.field == "name"


def test_tenants_tables_live_apart(tmp_path):
    assert tenant_data_dir(tmp_path, "local") == tmp_path
    assert tenant_data_dir(tmp_path, "a") != tenant_data_dir(tmp_path, "b")
    assert tenant_data_dir(tmp_path, "a").is_relative_to(tmp_path / "tenants")


def test_admission_refuses_with_the_figures(tmp_path):
    service = JobService(tmp_path)
    service.create_tenant("acme", "free")
    # ~2000 characters each: ~3 chunks of 256 tokens. Distinct: identical inline texts are one
    # document (content-derived ids).
    texts = [f"text {i} " + "word " * 400 for i in range(30)]
    with pytest.raises(QuotaExceededError) as err:
        service.submit("acme", {"table": "t", "texts": texts, "chunk_tokens": 16})
    figures = err.value.figures()
    assert figures["remaining"] == 1000 and figures["limit"] == 1000
    assert figures["needed"] > 1000 and figures["resets_at"] == resets_at().isoformat()
    job = service.submit("acme", {"table": "t", "texts": texts})
    assert job.status == "queued" and 30 <= job.estimated_chunks <= 200
    assert service.usage("acme").remaining_chunks == 1000  # estimates are not charged


def test_estimates_count_at_least_a_chunk_per_document():
    assert estimate_chunks(plan_texts(["a", "b", "c"]).partitions, None, None) == 3
    long_text = ["x" * 10_000]
    assert estimate_chunks(plan_texts(long_text).partitions, 130, 0) == 20  # 4 chars x 128


def test_missing_source_is_a_source_field_error(tmp_path):
    service = JobService(tmp_path)
    with pytest.raises(InvalidFieldError, match="source not found") as err:
        service.submit("local", {"table": "t", "source": str(tmp_path / "nope")})
    assert err.value.field == "source"


# The default model takes 256 tokens, 2 of them special: its chunks advance by the text tokens
# less the overlap (32 by default, at most a quarter of the text tokens).
@pytest.mark.parametrize(
    "chunk_tokens,overlap,step",
    [(None, None, 254 - 32), (64, None, 62 - 15), (128, 8, 126 - 8), (64, 0, 62)],
)
def test_the_estimate_advances_by_chunkings_step(tmp_path, chunk_tokens, overlap, step):
    info = model_limits(resolve_model(DEFAULT_MODEL))
    settings = ChunkSettings.for_model(info, chunk_tokens, overlap)
    assert settings.content_tokens - settings.overlap_tokens == step
    text = "word " * 20_000
    with JobService(tmp_path) as service:
        job = service.submit(
            "local",
            {
                "table": "t",
                "texts": [text],
                "chunk_tokens": chunk_tokens,
                "overlap_tokens": overlap,
            },
        )
    # "word " is a token in five characters, as the estimate's sample of the text measures.
    density = chars_per_token(
        plan_texts([text]).partitions, resolve_model(DEFAULT_MODEL), FileAccess()
    )
    assert density == pytest.approx(5.0, rel=1e-3)
    assert job.estimated_chunks == math.ceil(len(text) / (density * step))


def test_the_python_run_request_carries_every_job_field_to_the_spec():
    """run_embedding / embedscale.run take the job's fields as the API does: none is dropped
    on the way to the control plane's spec."""
    from embedscale.jobs.local_run import EmbedRequest

    request = EmbedRequest(
        table="t",
        texts=["a"],
        mode="sync",
        allow_empty=True,
        provider="openai",
        provider_url="http://127.0.0.1:9/v1",
        tokenizer=DEFAULT_MODEL,
        priority="high",
    )
    spec = request.spec()
    assert (
        spec.mode,
        spec.allow_empty,
        spec.provider,
        spec.provider_url,
        spec.tokenizer,
        spec.priority,
    ) == ("sync", True, "openai", "http://127.0.0.1:9/v1", DEFAULT_MODEL, "high")
    assert set(JobSpec.model_fields) <= set(EmbedRequest.model_fields)  # a JobSpec, and more
    with pytest.raises(PydanticValidationError, match="provider"):
        EmbedRequest(table="t", texts=["a"], provider="tensorrt").spec()
