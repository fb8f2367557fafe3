"""The model registry and the sentence-transformers backend on the packaged model."""

from __future__ import annotations

import numpy as np
import pytest

from embedscale.engine.errors import ModelError
from embedscale.engine.models import get_model, resolve_model
from embedscale.engine.models.cache import load_count
from embedscale.engine.models.loading import load_model
from tests.corpora import jsonl_corpus


def test_default_model_resolves_to_the_packaged_folder():
    spec = resolve_model("all-MiniLM-L6-v2")
    assert spec.name == "all-MiniLM-L6-v2" and spec.local
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == spec


def test_other_names_are_hub_ids_or_local_folders(tmp_path):
    assert resolve_model("org/model").location == "org/model"
    assert resolve_model("all-mpnet-base-v2").location == "sentence-transformers/all-mpnet-base-v2"
    assert resolve_model(str(tmp_path)).location == str(tmp_path)
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_model("./no/such/folder")
    with pytest.raises(ModelError, match="empty"):
        resolve_model(" ")


def test_an_unloadable_model_is_a_model_error():
    with pytest.raises(ModelError, match="cannot load model 'no-such-model-xyz'"):
        load_model(resolve_model("no-such-model-xyz"), device="cpu")


def test_backend_info(model):
    assert (model.info.dimension, model.info.max_tokens, model.info.special_tokens) == (384, 256, 2)


def test_embedding_token_ids_equals_encode(model, st_model):
    texts = [
        "A short sentence.",
        "Dask runs task graphs on a cluster of worker processes, "
        "and LanceDB stores the vectors they compute.",
    ]
    ids = [
        model.wrap(np.asarray(model.tokenizer.encode(t, add_special_tokens=False).ids))
        for t in texts
    ]
    ours = model.embed_token_ids(ids)
    reference = st_model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_model_is_loaded_once_per_process():
    spec = resolve_model("all-MiniLM-L6-v2")
    assert get_model(spec) is get_model(spec)
    assert load_count(spec) == 1


@pytest.mark.slow
def test_two_jobs_load_the_model_once_on_each_worker(service, cluster, tmp_path):
    """Asked on the workers themselves: however many partitions of however many jobs ran
    there, each worker process loaded the default model exactly once."""
    jobs = [
        service.submit(
            "local",
            {
                "table": f"t{i}",
                "chunk_tokens": 32,
                # Three partitions, of rows a quarter text: the model's work is not the point.
                "source": str(jsonl_corpus(tmp_path / f"c{i}.jsonl", rows=48, text_chars=250)),
            },
        )
        for i in range(2)
    ]
    finals = [service.wait(j.id, timeout=180) for j in jobs]
    assert [f.status for f in finals] == ["succeeded"] * 2
    assert all(f.partitions_total >= 2 for f in finals)
    loads = cluster.client.run(load_count, resolve_model("all-MiniLM-L6-v2"))
    assert len(loads) == 2 and set(loads.values()) == {1}, loads
