"""The ONNX Runtime provider (issue 9, item 2): the packaged model exported once per host,
cached on disk, run by onnxruntime on the same pre-tokenized ids, with the torch model's vectors.

The tests' workers and this process share one export cache (a session folder), so the real
export runs once per session; the cache's mechanics (reuse, keys, the host lock) are checked
with a stand-in exporter where a real one would only cost minutes.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import subprocess
from pathlib import Path

import lance
import numpy as np
import pytest
from pydantic import ValidationError

from embedscale.engine.errors import ModelError, TableError
from embedscale.engine.models import onnx_calibration, onnx_export, onnx_model, onnx_quantize
from embedscale.engine.models.cache import _key, get_model
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.models.loading import load_model
from embedscale.engine.models.onnx_pipeline import read_pipeline
from embedscale.engine.models.registry import provider_spec, resolve_model
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sink.schema import chunk_schema, table_provider
from embedscale.engine.tables.search import query_model
from embedscale.jobs.spec import JobSpec
from tests.helpers import embedscale_in_process, logged, read_rows
from tests.spawned import export_race

TEXTS = [
    "The heap queue algorithm keeps the smallest item at index zero.",
    "JSON encoders turn Python dictionaries into text.",
    "Statistics computes the mean, median and variance of numeric data. " * 40,
    "argparse parses command-line options, arguments and sub-commands.",
    "x",
]
ONNX = provider_spec("onnx", "all-MiniLM-L6-v2")
INT8 = provider_spec("onnx-int8", "all-MiniLM-L6-v2")
TORCH = resolve_model("all-MiniLM-L6-v2")


def _set_cache(path: str | None) -> None:
    """Run on each worker: its export cache folder (None: the default)."""
    if path is None:
        os.environ.pop(onnx_export.CACHE_ENV, None)
    else:
        os.environ[onnx_export.CACHE_ENV] = path


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory, cluster):
    """One export cache for this process and the tests' workers, as on one host; int8 exports
    quantized on a small sample (the procedure of 96 chunks, on 9: seconds, not a minute)."""
    folder = str(tmp_path_factory.mktemp("onnx-cache"))
    old = os.environ.get(onnx_export.CACHE_ENV), os.environ.get(onnx_quantize.SAMPLE_ENV)
    _set_cache(folder)
    os.environ[onnx_quantize.SAMPLE_ENV] = "9"
    cluster.client.run(_set_cache, folder)
    yield Path(folder)
    cluster.client.run(_set_cache, None)
    _set_cache(old[0])
    if old[1] is None:
        os.environ.pop(onnx_quantize.SAMPLE_ENV, None)
    else:
        os.environ[onnx_quantize.SAMPLE_ENV] = old[1]


@pytest.fixture(scope="module")
def onnx(onnx_cache):
    return get_model(ONNX, device="cpu")


@pytest.fixture(scope="module")
def int8(onnx_cache):
    return get_model(INT8, device="cpu")


def exports(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def fp32_exports(cache: Path) -> list[Path]:
    return [p for p in exports(cache) if "-int8" not in p.name]


# --- the model: the torch model's vectors -----------------------------------------------------


def test_onnx_vectors_match_torch_on_every_row(onnx, model):
    assert onnx.info == dataclasses.replace(model.info, provider="onnx")
    assert 80 << 20 < onnx.memory_bytes < 100 << 20  # fp32 weights: the model cache's budget
    rng = np.random.default_rng(7)
    ids = [onnx.tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    # Short and long inputs in one padded batch, real text and random ids, up to the limit.
    batch = [onnx.wrap(np.asarray(i[:254], dtype=np.int64)) for i in ids]
    batch += [onnx.wrap(rng.integers(1000, 29000, n)) for n in (1, 37, 120, 254)]
    for rows in (batch, batch[:1], batch[2:3]):
        got, expected = onnx.embed_token_ids(rows), model.embed_token_ids(rows)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert (got * expected).sum(axis=1).min() >= 0.9999
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # Normalize kept
    queries = onnx.embed_texts(TEXTS)
    assert (queries * model.embed_texts(TEXTS)).sum(axis=1).min() >= 0.9999


def test_torch_and_onnx_of_one_model_are_two_cached_instances():
    assert _key(ONNX, "cpu") != _key(TORCH, "cpu")
    assert ONNX.location == TORCH.location and ONNX.backend == "onnx"


# --- the export cache -------------------------------------------------------------------------


def test_a_second_load_reuses_the_export(onnx, onnx_cache, monkeypatch):
    before = fp32_exports(onnx_cache)
    assert len(before) == 1 and (before[0] / onnx_export.MODEL_FILE).is_file()

    def no_export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export", no_export)
    again = load_model(ONNX, device="cpu")  # a new instance, as a restarted worker makes
    assert again is not onnx and again.info == onnx.info
    assert fp32_exports(onnx_cache) == before
    assert not [p for p in onnx_cache.iterdir() if p.name.startswith(".")]  # no temp folder


def test_a_changed_model_file_is_a_new_key(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(TORCH.location, folder)
    pipeline = read_pipeline(folder)
    key = onnx_export.export_key(folder, pipeline)
    assert onnx_export.export_key(Path(TORCH.location), pipeline) == key  # where: not a part
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert onnx_export.export_key(folder, pipeline) != key
    (folder / "extra.bin").write_bytes(b"\0")
    assert len({key, onnx_export.export_key(folder, pipeline)}) == 2


@pytest.mark.slow
def test_concurrent_loads_on_one_host_export_once(tmp_path):
    cache = tmp_path / "host" / "cache"
    ctx = mp.get_context("spawn")  # three processes, as three workers of one host
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(target=export_race, args=(str(cache), TORCH.location, start)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len((tmp_path / "host" / "runs").read_text().split()) == 1
    assert len(exports(cache)) == 1 and not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_a_failed_export_leaves_nothing_and_names_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_export.CACHE_ENV, str(tmp_path / "cache"))

    def broken(folder, pipeline, target):
        target.write_bytes(b"half")
        raise ModelError(f"cannot export {folder} to ONNX: boom")

    monkeypatch.setattr(onnx_export, "export", broken)
    with pytest.raises(ModelError, match="cannot export"):
        load_model(ONNX, device="cpu")
    assert exports(tmp_path / "cache") == []
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


# --- onnx-int8: opt-in, its own vectors ------------------------------------------------------


def test_int8_is_the_fp32_export_statically_quantized(onnx, int8, onnx_cache):
    assert int8.info == dataclasses.replace(onnx.info, provider="onnx-int8")
    ids = [onnx.tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    batch = [
        onnx.wrap(np.asarray(i[s : s + 126], dtype=np.int64))
        for i in ids
        for s in range(0, max(len(i) - 8, 1), 64)
    ]
    vectors = int8.embed_token_ids(batch)
    cos = (vectors * onnx.embed_token_ids(batch)).sum(axis=1)
    # Measured with this sample: 0.993 on average, 0.970 at worst (the one-word input).
    assert cos.mean() >= 0.985 and cos.min() >= 0.95, cos
    assert cos.min() < 0.9999  # other vectors indeed: kept out of fp32 tables
    # Static ranges: a chunk's vector is its own, whatever it is batched with (dynamic int8's
    # were not: cosine 0.986 between one chunk alone and in a batch).
    alone = np.concatenate([int8.embed_token_ids([row]) for row in batch])
    assert (alone * vectors).sum(axis=1).min() >= 0.99999
    fp32, quantized = (
        fp32_exports(onnx_cache),
        [p for p in exports(onnx_cache) if "-int8" in p.name],
    )
    assert len(quantized) == 1
    assert quantized[0].name.startswith(f"{fp32[0].name}-int8-{onnx_quantize.INT8_FORMAT}-n9-")
    assert (
        query_model(chunk_schema("all-MiniLM-L6-v2", 384, "onnx-int8"), "all-MiniLM-L6-v2") == INT8
    )
    assert JobSpec(table="t", texts=["a"], provider="onnx-int8").provider == "onnx-int8"


def _graph(model):
    """(producer of each tensor, initializers as arrays) of an ONNX model."""
    from onnx import numpy_helper

    producers = {out: node for node in model.graph.node for out in node.output}
    return producers, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _attribute(node, name):
    return next(a.i for a in node.attribute if a.name == name)


def test_int8_quantizes_weight_matmuls_per_channel_inputs_per_tensor(int8, onnx_cache):
    import onnx as onnx_lib

    (folder,) = [p for p in exports(onnx_cache) if "-int8" in p.name]
    report = json.loads((folder / onnx_quantize.REPORT_FILE).read_text())
    model = onnx_lib.load(str(folder / onnx_export.MODEL_FILE))
    fp32 = onnx_lib.load(str(fp32_exports(onnx_cache)[0] / onnx_export.MODEL_FILE))
    weighted = list(onnx_calibration.matmul_inputs(fp32))
    assert len(weighted) == 36  # 6 layers: Q, K, V, attention output, 2 FFN
    assert sorted(report["quantized"] + report["kept_fp32"]) == sorted(weighted)
    assert report["inputs"] == 18  # 9 chunks, each with a short input
    producers, arrays = _graph(model)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 48
    for node in matmuls:
        kinds = [getattr(producers.get(i), "op_type", None) for i in node.input]
        if node.name not in report["quantized"]:  # kept in fp32, or attention's products
            assert "DequantizeLinear" not in kinds, node.name
            continue
        x, w = (producers[i] for i in node.input)
        assert kinds == ["DequantizeLinear", "DequantizeLinear"]
        weight, scale = arrays[w.input[0]], arrays[w.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[1],)  # per channel
        assert _attribute(w, "axis") == 1  # the output channels
        assert arrays[x.input[1]].size == 1 and arrays[x.input[2]].dtype == np.uint8
        assert producers[x.input[0]].op_type == "QuantizeLinear"  # static: a fixed scale
    outputs = {out for node in matmuls for out in node.output}
    assert not [
        n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in outputs
    ]
    assert not [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]


def test_a_matmul_kept_in_fp32_gets_its_fp32_input_and_weight_back(int8, onnx_cache):
    import onnx as onnx_lib
    import onnxruntime

    (folder,) = [p for p in exports(onnx_cache) if "-int8" in p.name]
    model = onnx_lib.load(str(folder / onnx_export.MODEL_FILE))
    fp32 = onnx_lib.load(str(fp32_exports(onnx_cache)[0] / onnx_export.MODEL_FILE))
    # Q shares its input with K and V (which stay int8); the FFN output's input is its own.
    kept = (
        "/transformer/encoder/layer.2/attention/self/query/MatMul",
        "/transformer/encoder/layer.4/output/dense/MatMul",
    )
    trial = onnx_quantize._kept_in_fp32(model, fp32, kept)
    producers, arrays = _graph(trial)
    original = {n.name: list(n.input) for n in fp32.graph.node}
    nodes = {n.name: n for n in trial.graph.node}
    for name in kept:
        assert list(nodes[name].input) == original[name]
        assert arrays[original[name][1]].dtype == np.float32
    key = producers[nodes["/transformer/encoder/layer.2/attention/self/key/MatMul"].input[0]]
    assert key.op_type == "DequantizeLinear"  # its siblings keep their int8 input
    # The FFN output's Q/DQ pair and int8 weight are gone: nothing used them any more.
    used = {i for n in trial.graph.node for i in n.input}
    assert not [n for n in trial.graph.node if "Linear" in n.op_type and n.output[0] not in used]
    assert not [i for i in trial.graph.initializer if i.name not in used]
    session = onnxruntime.InferenceSession(
        trial.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = {"input_ids": np.asarray([[101, 7592, 102]]), "attention_mask": np.ones((1, 3), int)}
    assert session.run([onnx_export.OUTPUT], feed)[0].shape == (1, 384)


def test_the_int8_sample_is_fed_as_jobs_feed_the_model(onnx, onnx_cache):
    texts = onnx_quantize.sample_texts()
    assert len(texts) == 9
    room = onnx.info.max_tokens - onnx.info.special_tokens
    contents = [onnx.tokenizer.encode(t, add_special_tokens=False).ids[:room] for t in texts]
    shorts = [c[:n] for c, n in zip(contents, [4, 8, 16, 32, 64, 4, 8, 16, 32])]
    calibrate, score = onnx._int8_sample()

    def rows(feeds):
        for feed in feeds:
            ids, mask = feed["input_ids"], feed["attention_mask"]
            assert set(np.unique(ids[mask == 0])) <= {onnx._pad_id}  # padded with the pad id
            assert sorted(mask.sum(axis=1)) == list(mask.sum(axis=1))  # sorted by length
            yield from (tuple(r[m == 1]) for r, m in zip(ids, mask))

    def full(ids):
        return (*onnx._prefix, *ids, *onnx._suffix)

    # Two thirds of the chunks and their short inputs fix the ranges; the rest score.
    assert sorted(rows(calibrate)) == sorted(map(full, contents[:6] + shorts[:6]))
    assert sorted(rows(score)) == sorted(map(full, contents[6:] + shorts[6:]))
    reader = onnx_quantize._Reader(calibrate)  # what quantize_static's calibration reads
    assert all(reader.get_next() is feed for feed in calibrate) and reader.get_next() is None


def _identity_matmul(width: int):
    """x -> Identity -> h -> MatMul(eye) -> y, with an attention_mask input (a tiny model)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["h"], name="copy"),
            helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, width]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [None, None]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_input_ranges_are_the_percentile_of_real_tokens_only():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 1500, 64)).astype(np.float32)
    mask = np.ones((2, 1500), dtype=np.int64)
    mask[1, 1000:] = 0
    x[1, 1200, 5] = -500.0  # padding: not the model's data
    x[0, 7, 3] = 80.0  # one outlier among real tokens: clipped by the percentile
    model = _identity_matmul(64)
    assert onnx_calibration.matmul_inputs(model) == {"mm": "h"}
    feeds = [{"x": x[:1], "attention_mask": mask[:1]}, {"x": x[1:], "attention_mask": mask[1:]}]
    (low, high) = onnx_calibration.input_ranges(model, ["h"], feeds)["h"]
    real = x[mask == 1]
    k = int(np.ceil(real.size * (1 - onnx_calibration.PERCENTILE / 100)))  # 2 of 160,000
    threshold = np.sort(np.abs(real).ravel())[-k]
    assert threshold < 80.0 and (low, high) == pytest.approx(
        (max(-threshold, real.min()), min(threshold, real.max()))
    )
    # Identity weights: the uint8 rounding of the input only (the padding's -500, clipped,
    # would be an error as large as the signal: padding is left out here too).
    errors = onnx_calibration.local_errors(model, {"mm": "h"}, {"h": (low, high)}, feeds[1:])
    assert 0.0 < errors["mm"] < 1e-3


def test_choose_kept_is_a_greedy_search_with_a_least_gain():
    table = {
        (): 0.980,
        ("a",): 0.984,
        ("b",): 0.986,
        ("c",): 0.979,
        ("b", "a"): 0.9865,
        ("b", "c"): 0.990,
    }
    tried = []

    def score(kept):
        tried.append(kept)
        return table[kept]

    assert onnx_quantize.choose_kept(score, ["a", "b", "c"], 2, 0.001) == (("b", "c"), 0.990)
    assert tried == [(), ("a",), ("b",), ("c",), ("b", "a"), ("b", "c")]
    # A gain under the least one keeps nothing more; most=0 keeps nothing at all.
    assert onnx_quantize.choose_kept(score, ["a", "b", "c"], 2, 0.007) == ((), 0.980)
    assert onnx_quantize.choose_kept(score, ["a", "b"], 0, 0.001) == ((), 0.980)


@pytest.mark.parametrize("raw", ["2", "many", "-5"])
def test_a_bad_int8_sample_size_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(onnx_quantize.SAMPLE_ENV, raw)
    with pytest.raises(ModelError, match=f"{onnx_quantize.SAMPLE_ENV}='{raw}'.*>= 3"):
        onnx_quantize.sample_size()


def test_int8_on_a_cuda_device_runs_on_the_cpu_saying_so(int8):
    with logged(onnx_model.__name__) as lines:
        loaded = load_model(INT8, device="cuda")
    assert loaded.device == "cpu" and loaded.info.provider == "onnx-int8"
    assert len(lines) == 1 and "runs on the CPU, not on cuda" in lines[0]


def test_an_export_killed_midway_leaves_no_folder_for_good(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(onnx_export.CACHE_ENV, str(cache))
    folder = Path(TORCH.location)
    pipeline = read_pipeline(folder)
    key = onnx_export.export_key(folder, pipeline)
    (cache / f".{key}-killed").mkdir(parents=True)  # as a worker killed mid-export leaves it
    (cache / f".{key}-killed" / "model.onnx").write_bytes(b"half")
    (cache / ".otherkey-running").mkdir()  # another model's export, under its own lock
    monkeypatch.setattr(onnx_export, "export", lambda f, p, target: target.write_bytes(b"onnx"))
    path = onnx_export.exported_model(folder, pipeline)
    assert path == cache / key / onnx_export.MODEL_FILE and path.read_bytes() == b"onnx"
    assert sorted(p.name for p in exports(cache)) == [".otherkey-running", key]


# --- pipelines it cannot reproduce are refused ------------------------------------------------


def _pipeline_folder(tmp_path: Path, modules: list[str], pooling: dict) -> Path:
    folder = tmp_path / "st"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": i,
                    "name": str(i),
                    "path": ["", "1_Pooling", "2_x"][i],
                    "type": f"sentence_transformers.models.{kind}",
                }
                for i, kind in enumerate(modules)
            ]
        )
    )
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, **pooling})
    )
    return folder


@pytest.mark.parametrize(
    "modules,pooling,message",
    [
        (
            ["Transformer", "Pooling", "Dense"],
            {"pooling_mode_mean_tokens": True},
            "Transformer -> Pooling -> Dense",
        ),
        (["Transformer", "Pooling"], {"pooling_mode_weightedmean_tokens": True}, "weightedmean"),
        (
            ["Transformer", "Pooling"],
            {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True},
            "cls + max",
        ),
        (["Transformer", "Pooling"], {"pooling_mode": "lasttoken"}, "lasttoken"),
    ],
)
def test_a_pipeline_it_cannot_reproduce_is_refused(tmp_path, modules, pooling, message):
    with pytest.raises(ModelError) as err:
        read_pipeline(_pipeline_folder(tmp_path, modules, pooling))
    assert message in str(err.value) and "use provider sentence-transformers" in str(err.value)


def test_pipelines_it_reproduces(tmp_path):
    pipeline = read_pipeline(Path(TORCH.location))
    assert (pipeline.pooling, pipeline.normalize, pipeline.dimension, pipeline.max_seq_length) == (
        "mean",
        True,
        384,
        256,
    )
    cls = read_pipeline(
        _pipeline_folder(tmp_path, ["Transformer", "Pooling"], {"pooling_mode": "cls"})
    )
    assert (cls.pooling, cls.normalize, cls.max_seq_length) == ("cls", False, None)


# --- selection, validation, the device --------------------------------------------------------


def test_unknown_provider_is_a_clear_error_naming_the_field():
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate({"table": "t", "texts": ["a"], "provider": "tensorrt"})
    first = err.value.errors()[0]
    assert first["loc"] == ("provider",) and "'onnx'" in first["msg"]
    assert JobSpec(table="t", texts=["a"], provider="onnx").provider == "onnx"
    with pytest.raises(ModelError, match=r"unknown provider 'tensorrt'.*onnx"):
        provider_spec("tensorrt", "all-MiniLM-L6-v2")


def test_cuda_without_the_cuda_provider_falls_back_to_torch_saying_so(monkeypatch):
    import onnxruntime

    loaded = []
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(
        onnx_model,
        "SentenceTransformerModel",
        lambda spec, device: loaded.append((spec, device)) or "torch model",
    )
    with logged(onnx_model.__name__) as lines:
        assert load_model(ONNX, device="cuda:1") == "torch model"
    assert loaded == [(TORCH, "cuda:1")]
    assert len(lines) == 1 and "no CUDAExecutionProvider" in lines[0]
    assert "runs on torch on cuda:1" in lines[0]
    assert onnx_model._providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})


# --- tables: one vector space for torch and ONNX fp32 of one model ----------------------------


def test_torch_and_onnx_tables_take_each_others_vectors_but_no_other_model(tmp_path):
    torch_info = ModelInfo("all-MiniLM-L6-v2", 384, 256, 2)
    onnx_info = dataclasses.replace(torch_info, provider="onnx")
    for first, second in ((torch_info, onnx_info), (onnx_info, torch_info)):
        table = ChunkTable(tmp_path, f"t-{first.provider}")
        table.prepare(first, "append")
        table.prepare(second, "append")  # accepted
        assert table_provider(lance.dataset(table.uri).schema)[0] == first.provider
        with pytest.raises(TableError, match="holds vectors of model 'all-MiniLM-L6-v2'"):
            table.prepare(dataclasses.replace(second, name="/models/other"), "append")
        for other in (
            dataclasses.replace(second, provider="openai", provider_url="http://h/v1"),
            dataclasses.replace(second, provider="onnx-int8"),
        ):
            with pytest.raises(TableError, match="provider"):
                table.prepare(other, "append")
    int8 = ChunkTable(tmp_path, "t-int8")
    int8.prepare(dataclasses.replace(torch_info, provider="onnx-int8"), "append")
    for fp32 in (torch_info, onnx_info):
        with pytest.raises(TableError, match="holds vectors of provider 'onnx-int8'"):
            int8.prepare(fp32, "append")
    # Queries of an ONNX table are embedded by the ONNX provider.
    assert query_model(chunk_schema("all-MiniLM-L6-v2", 384, "onnx"), "all-MiniLM-L6-v2") == ONNX


@pytest.mark.slow
def test_an_onnx_job_end_to_end_and_into_a_torch_table(service, onnx_cache, st_model):
    torch_job = service.wait(
        service.submit("local", {"table": "mixed", "texts": TEXTS[:2]}).id, timeout=180
    )
    assert torch_job.status == "succeeded", torch_job.error
    job = service.wait(
        service.submit(
            "local",
            {
                "table": "mixed",
                "texts": TEXTS,
                "ids": [f"o{i}" for i in range(len(TEXTS))],
                "provider": "onnx",
                "chunk_tokens": 64,
            },
        ).id,
        timeout=300,
    )
    assert job.status == "succeeded", job.error
    assert job.spec["provider"] == "onnx"  # the record names the provider
    assert len(fp32_exports(onnx_cache)) == 1  # both workers loaded one export of the host

    rows = [
        r
        for r in read_rows(service.tenant_data_dir("local"), "mixed").to_pylist()
        if r["job_id"] == job.id
    ]
    assert len(rows) == job.chunks_done > len(TEXTS)  # the long text became several chunks
    expected = st_model.encode(
        [r["text"] for r in rows], convert_to_numpy=True, normalize_embeddings=True
    )
    got = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    assert (got * expected).sum(axis=1).min() >= 0.9999
    hits = service.search("local", "mixed", "smallest item of a heap", k=1)
    assert "heap" in hits[0].text

    # An ONNX job's own table, then a torch job into it: accepted, and the table says ONNX.
    fresh = service.wait(
        service.submit("local", {"table": "from-onnx", "texts": TEXTS[:1], "provider": "onnx"}).id,
        timeout=180,
    )
    assert fresh.status == "succeeded", fresh.error
    uri = service.table_uri("local", "from-onnx")
    assert table_provider(lance.dataset(uri).schema) == ("onnx", None)
    back = service.wait(
        service.submit("local", {"table": "from-onnx", "texts": TEXTS[1:2]}).id, timeout=180
    )
    assert back.status == "succeeded", back.error
    assert lance.dataset(uri).count_rows() == 2


@pytest.mark.slow
def test_an_onnx_job_of_another_model_into_the_table_is_refused(service, onnx_cache, tmp_path):
    done = service.wait(
        service.submit("local", {"table": "one", "texts": TEXTS[:1]}).id, timeout=180
    )
    assert done.status == "succeeded", done.error
    other = tmp_path / "other-model"
    shutil.copytree(TORCH.location, other)  # the same files: the host's export is reused
    job = service.wait(
        service.submit(
            "local", {"table": "one", "texts": ["x y z"], "provider": "onnx", "model": str(other)}
        ).id,
        timeout=180,
    )
    assert job.status == "failed"
    assert "holds vectors of model 'all-MiniLM-L6-v2'" in job.error and str(other) in job.error
    assert lance.dataset(service.table_uri("local", "one")).count_rows() == 1


@pytest.mark.slow
def test_cli_run_and_search_with_the_onnx_provider(
    onnx, onnx_cache, cluster, small_corpus, tmp_path
):
    # The commands run in this process (tests.helpers), the run on the tests' cluster, whose
    # workers share the cache's export: what a run's own cluster would add (a LocalCluster as
    # the tests' own, starting and loading a model) is the pipeline's and the cluster CLI's to
    # test, not the provider's.
    data = str(tmp_path / "data")
    cache = {onnx_export.CACHE_ENV: str(onnx_cache)}
    done = embedscale_in_process(
        "run",
        str(small_corpus),
        "--table",
        "docs",
        "--data-dir",
        data,
        "--scheduler",
        cluster.client.scheduler.address,
        "--provider",
        "onnx",
        "--chunk-tokens",
        "128",
        "--json",
        env=cache,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["chunks"] > 12
    found = embedscale_in_process(
        "search",
        "docs",
        "heap queue algorithm, priority queue",
        "-k",
        "1",
        "--data-dir",
        data,
        "--json",
        env=cache,
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["doc_id"] == "heapq.txt"
    bad = embedscale_in_process(
        "run", str(small_corpus), "--table", "t", "--data-dir", data, "--provider", "tensorrt"
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--provider" in bad.stderr and "'onnx'" in bad.stderr


@pytest.mark.slow
def test_cli_schedules_add_takes_the_provider_options(tmp_path, small_corpus):
    data = ["--data-dir", str(tmp_path / "data")]

    def add(*args: str) -> subprocess.CompletedProcess:  # in this process (tests.helpers)
        return embedscale_in_process(
            "schedules", "add", "@daily", str(small_corpus), "--table", "t", *args, *data, "--json"
        )

    onnx_run = add("--provider", "onnx")
    assert onnx_run.returncode == 0, onnx_run.stderr
    assert json.loads(onnx_run.stdout)["template"]["provider"] == "onnx"
    remote = add(
        "--provider",
        "openai",
        "--provider-url",
        "http://127.0.0.1:9/v1",
        "--tokenizer",
        "all-MiniLM-L6-v2",
    )
    assert remote.returncode == 0, remote.stderr
    template = json.loads(remote.stdout)["template"]
    assert (template["provider"], template["provider_url"], template["tokenizer"]) == (
        "openai",
        "http://127.0.0.1:9/v1",
        "all-MiniLM-L6-v2",
    )
    bad = add("--provider", "tensorrt")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("embedscale: error: --provider:") and "'onnx'" in bad.stderr
