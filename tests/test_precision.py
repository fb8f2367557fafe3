"""Precision chosen by measurement (engine/models/cpu_precision.py): the choice as a pure
function, bf16 on the real model within the guard, auto reading the host's measurements, the
fallback of a CPU without bf16, and the job field from the facade, the CLI and the API."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from pydantic import ValidationError

from embedscale.engine.errors import ModelError
from embedscale.engine.models import cpu_precision
from embedscale.engine.models.cpu_precision import (
    BF16_AUTOCAST,
    BF16_WEIGHTS,
    FP32,
    Measurement,
    candidates_for,
    choose,
)
from embedscale.engine.models.registry import resolve_model
from embedscale.jobs.spec import JobSpec, model_spec
from tests.helpers import logged

SENTENCE_TRANSFORMER_LOG = "embedscale.engine.models.sentence_transformer"
BF16 = cpu_precision.cpu_bf16_supported()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no bf16 kernels in torch")


def measured(fp32=10.0, autocast=(5.0, 0.9995), weights=(4.0, 0.998)):
    return {
        FP32: Measurement(FP32, fp32, 1.0),
        BF16_AUTOCAST: Measurement(BF16_AUTOCAST, *autocast),
        BF16_WEIGHTS: Measurement(BF16_WEIGHTS, *weights),
    }


# --- the choice, pure ----------------------------------------------------------------------


def test_auto_keeps_the_fastest_form_that_meets_the_guard():
    assert choose("auto", measured(), 0.999) == cpu_precision.Choice(BF16_AUTOCAST, 0.9995, 2.0)
    assert choose("auto", measured(), 0.99) == cpu_precision.Choice(BF16_WEIGHTS, 0.998, 2.5)


def test_auto_keeps_fp32_when_no_form_meets_the_guard_or_none_was_measured():
    assert choose("auto", measured(), 0.9999) == cpu_precision.Choice(FP32, 1.0, 1.0)
    assert choose("auto", {FP32: Measurement(FP32, 1.0, 1.0)}, 0.999).candidate == FP32
    assert choose("fp32", measured(), 0.5) == cpu_precision.Choice(FP32)


def test_bf16_takes_the_faster_bf16_form_or_is_refused_naming_the_field():
    assert choose("bf16", measured(weights=(4.0, 0.9992)), 0.999).candidate == BF16_WEIGHTS
    assert choose("bf16", measured(fp32=1.0), 0.999).candidate == BF16_AUTOCAST  # slower: asked
    with pytest.raises(ModelError, match=r"precision 'bf16' keeps a minimum cosine .*0\.99950"):
        choose("bf16", measured(), 0.9999)


def test_candidates_follow_the_cpu_and_int8_is_not_a_torch_form():
    assert candidates_for("auto", True) == (FP32, BF16_AUTOCAST, BF16_WEIGHTS)
    assert candidates_for("auto", False) == candidates_for("fp32", True) == (FP32,)
    # A guard of 1.0: only fp32 gives fp32's vectors, so auto measures nothing else.
    assert candidates_for("auto", True, 1.0) == (FP32,)
    assert candidates_for("bf16", True, 1.0) == (FP32, BF16_AUTOCAST, BF16_WEIGHTS)
    with pytest.raises(ModelError, match="onnx-int8"):
        candidates_for("int8", True)


def test_the_guard_comes_from_the_environment_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv(cpu_precision.MIN_COSINE_ENV, "0.9995")
    assert cpu_precision.min_cosine_guard() == 0.9995
    monkeypatch.setenv(cpu_precision.MIN_COSINE_ENV, "high")
    with pytest.raises(ModelError, match=cpu_precision.MIN_COSINE_ENV):
        cpu_precision.min_cosine_guard()


def test_the_calibration_sample_ships_with_the_package():
    texts = json.loads(cpu_precision.CALIBRATION_FILE.read_text())["texts"]
    assert len(texts) == 256 and all(len(t.split()) == 150 for t in texts)


# --- the real model ------------------------------------------------------------------------


def load(precision: str):
    from embedscale.engine.models.sentence_transformer import SentenceTransformerModel

    spec = dataclasses.replace(resolve_model("all-MiniLM-L6-v2"), precision=precision)
    return SentenceTransformerModel(spec, "cpu")


@pytest.fixture
def host_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_precision.CACHE_ENV, str(tmp_path / "precision.json"))
    monkeypatch.setenv(cpu_precision.MIN_COSINE_ENV, "0.999")
    return tmp_path / "precision.json"


@needs_bf16
def test_bf16_rows_stay_within_the_guard_of_fp32_rows(host_cache, st_model):
    model = load("bf16")
    assert model.info.precision in (BF16_AUTOCAST, BF16_WEIGHTS)
    assert model.info.dtype == "bfloat16" and model.info.precision_cosine >= 0.999
    # Texts the measurement did not see, half through the workers' path (token ids) against
    # the fp32 model on the same path, half through the queries' path against plain encode:
    # each of the 40 texts on one path (each pass of the real model costs seconds of CPU).
    texts = json.loads(cpu_precision.CALIBRATION_FILE.read_text())["texts"]
    ids_texts, query_texts = texts[200:220], texts[220:240]
    limit = model.info.max_tokens - model.info.special_tokens
    batch = [model.wrap(np.asarray(model.tokenizer.encode(t).ids[:limit])) for t in ids_texts]
    for got, ref in (
        (model.embed_token_ids(batch), load("fp32").embed_token_ids(batch)),
        (model.embed_texts(query_texts), st_model.encode(query_texts, convert_to_numpy=True)),
    ):
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert got.dtype == np.float32 and cos.min() >= 0.999, cos.min()
    # The measurement is kept for the host, under the model, torch and the CPU's flags.
    (entry,) = json.loads(host_cache.read_text()).values()
    assert set(entry) == {FP32, BF16_AUTOCAST, BF16_WEIGHTS}


@needs_bf16
def test_auto_picks_from_the_hosts_measurements_and_records_its_choice(host_cache):
    import logging

    import torch

    spec = resolve_model("all-MiniLM-L6-v2")
    key = cpu_precision.host_key(spec.location, torch.get_num_threads(), True)
    cpu_precision.store(key, measured())  # as an earlier worker on this host measured
    logger = logging.getLogger(SENTENCE_TRANSFORMER_LOG)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not .level: it clears the logger's cache
    try:
        with logged(SENTENCE_TRANSFORMER_LOG) as lines:
            model = load("auto")
    finally:
        logger.setLevel(level)
    info = model.info
    assert (info.precision, info.precision_cosine, info.precision_speedup) == (
        BF16_AUTOCAST,
        0.9995,
        2.0,
    )
    assert [line for line in lines if "precision auto -> bf16-autocast" in line]


@pytest.mark.parametrize(("requested", "level"), [("bf16", "WARNING"), ("auto", "INFO")])
def test_a_cpu_without_bf16_falls_back_to_fp32_with_one_line(
    host_cache, monkeypatch, requested, level
):
    """A warning where bf16 was asked for; for auto, the default, an info line."""
    import logging

    monkeypatch.setattr(cpu_precision, "cpu_bf16_supported", lambda: False)
    logger = logging.getLogger(SENTENCE_TRANSFORMER_LOG)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        model = load(requested)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert (model.info.precision, model.info.dtype) == (FP32, "float32")
    lines = [r for r in records if "no bf16 kernels" in r.getMessage()]
    assert [r.levelname for r in lines] == [level]
    assert not host_cache.exists()  # nothing to measure


# --- the job field -------------------------------------------------------------------------


def test_the_job_field_reaches_the_model_spec_and_bad_values_name_it():
    assert JobSpec(table="t", texts=["a"]).precision == "auto"
    assert model_spec(JobSpec(table="t", texts=["a"], precision="bf16")).precision == "bf16"
    assert JobSpec(table="t", texts=["a"], precision="int8", provider="onnx-int8")
    for fields in (
        {"precision": "fp8"},
        {"precision": "int8"},
        {"precision": "bf16", "provider": "onnx"},
    ):
        with pytest.raises(ValidationError, match="precision"):
            JobSpec(table="t", texts=["a"], **fields)


def test_the_facade_runs_a_job_in_the_precision_it_names(cluster, tmp_path):
    import embedscale
    from embedscale.api.cli.cluster import worker_rows

    summary = embedscale.run(
        ["heaps keep the smallest item first"],
        table="fp32",
        precision="fp32",
        cluster=cluster,
        data_dir=str(tmp_path),
        progress=False,
    )
    assert summary.ok
    shown = [label for row in worker_rows(cluster.client) for label in row["model_precisions"]]
    assert "all-MiniLM-L6-v2 (fp32)" in shown
    # The job records what it asked for and the form each worker ran (nothing measured).
    workers = len(cluster.client.nthreads())
    assert summary.precision == {
        "requested": "fp32",
        "forms": [
            {
                "form": FP32,
                "precision": "fp32",
                "min_cosine": None,
                "speedup": None,
                "workers": workers,
            }
        ],
    }


def test_a_job_records_the_forms_its_workers_chose():
    from embedscale.engine.models.info import ModelInfo, describe_form, precision_forms

    base = ModelInfo("m", 384, 256, 2)
    bf16 = dataclasses.replace(
        base, precision=BF16_WEIGHTS, precision_cosine=0.9999, precision_speedup=1.93
    )
    forms = precision_forms([bf16, base, bf16])
    assert [(f["form"], f["precision"], f["workers"]) for f in forms] == [
        (BF16_WEIGHTS, "bf16", 2),
        (FP32, "fp32", 1),
    ]
    assert describe_form(forms[0]) == "bf16-weights (min cosine 0.99990, 1.93x) on 2 workers"
    assert describe_form(forms[1]) == "fp32 on 1 worker"


def test_the_cli_refuses_a_bad_precision_naming_the_flag(tmp_path):
    from tests.dask_processes import run_cli_in_process

    # An argparse refusal, the same in this process as in a fresh one.
    done = run_cli_in_process("run", str(tmp_path), "--table", "t", "--precision", "fp8")
    assert done.returncode != 0 and "precision" in done.stderr, done.stderr


def test_the_api_refuses_a_bad_precision_with_the_field(server):
    with server.tenant("precision-api") as client:
        for body in ({"precision": "fp8"}, {"precision": "int8"}):
            response = client.post("/v1/jobs", json={"table": "t", "texts": ["a"], **body})
            assert response.status_code == 422, response.text
            assert "precision" in response.text
        # A migration's new generation takes the field too, checked the same way.
        response = client.post(
            "/v1/tables/t/migrations", json={"model": "all-MiniLM-L6-v2", "precision": "fp8"}
        )
        assert response.status_code == 422 and "precision" in response.text, response.text
