"""The quota estimate reads the job's own text with the model's tokenizer (jobs/token_density.py):
on real pydoc text it lands near the chunks the job really makes, where the fixed 4 characters a
token fell short."""

from __future__ import annotations

import shutil

from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
from embedscale.engine.models import resolve_model
from embedscale.engine.sources.enumeration import plan_source, plan_texts
from embedscale.engine.sources.file_access import FileAccess
from embedscale.jobs.tenants.quotas import CHARS_PER_TOKEN, estimate_chunks
from embedscale.jobs.token_density import chars_per_token
from tests.conftest import SAMPLE_CORPUS


def test_the_estimate_follows_the_texts_own_density(model, tmp_path):
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLE_CORPUS / "stdlib", folder)
    plan = plan_source(folder)
    texts = [p.read_text() for p in sorted(folder.glob("*.txt"))]
    settings = ChunkSettings.for_model(model.info, None, None)
    actual = len(chunk_texts(texts, model.tokenizer, settings))
    spec = resolve_model("all-MiniLM-L6-v2")
    density = chars_per_token(plan.partitions, spec, FileAccess())
    assert 2.5 < density < CHARS_PER_TOKEN  # Python reference text: denser than prose
    fixed = estimate_chunks(plan.partitions, None, None, model.info)
    measured = estimate_chunks(plan.partitions, None, None, model.info, density)
    assert abs(measured - actual) < abs(fixed - actual)
    assert abs(measured - actual) <= 0.1 * actual, (measured, actual, fixed)


def test_without_a_sample_the_fixed_density_stands(tmp_path):
    spec = resolve_model("all-MiniLM-L6-v2")
    access = FileAccess()
    assert (
        chars_per_token(plan_texts(["too short to say"]).partitions, spec, access)
        == CHARS_PER_TOKEN
    )
    assert chars_per_token(plan_texts(["x" * 1000]).partitions, None, access) == CHARS_PER_TOKEN
    (tmp_path / "a.txt").write_text("gone before it is sampled " * 50)
    plan = plan_source(tmp_path)
    (tmp_path / "a.txt").unlink()
    assert chars_per_token(plan.partitions, spec, access) == CHARS_PER_TOKEN
