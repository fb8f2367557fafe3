"""Configuration files (tiers YAML, cluster specs) are checked when they are read: a count
written 1e4, an unknown key or a file that is not YAML is one line naming the file, the entry
and the field, never a surprise inside the runner. In process: no cluster, no subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedscale.api.cli.main import main
from embedscale.engine.cluster.spec import ClusterSpec
from embedscale.engine.errors import EmbedscaleError
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.tenants.tiers import DEFAULT_TIERS_FILE, load_tiers

ROOT = Path(__file__).resolve().parents[1]
GOLD = "tiers:\n  gold: {daily_chunks: 5, max_concurrent_jobs: 1, %s}\n"


def tiers_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiers.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tiers:\n  gold: {daily_chunks: 1e4, max_concurrent_jobs: 1}\n",
            "daily_chunks: must be a whole number, not '1e4' (write the whole number 10000)",
        ),
        (
            "tiers:\n  gold: {daily_chunks: 10000.0, max_concurrent_jobs: 1}\n",
            "daily_chunks: must be a whole number, not 10000.0 (write the whole number 10000)",
        ),
        (GOLD % "requests_per_minute: '60'", "requests_per_minute: must be a whole number"),
        (GOLD % "reads_per_minute: true", "reads_per_minute: must be a whole number, not True"),
        (GOLD % "weight: 0", "weight: must be greater than 0, not 0"),
        (GOLD % "weight: heavy", "weight: must be a number, not 'heavy'"),
        (GOLD % "colour: red", "unknown keys ['colour']; known: ['daily_chunks',"),
        ("tiers:\n  gold: {max_concurrent_jobs: 1}\n", "daily_chunks: is required"),
        ("tiers:\n  gold: {daily_chunks: -1, max_concurrent_jobs: 0}\n", "greater than or equal"),
    ],
)
def test_a_bad_tier_is_refused_at_load_naming_file_tier_and_field(tmp_path, text, expected):
    path = tiers_file(tmp_path, text)
    with pytest.raises(InvalidFieldError) as err:
        load_tiers(path)
    message = str(err.value)
    assert message.startswith(f"tier 'gold' in {path}: ") and expected in message
    assert "\n" not in message and err.value.field == "tiers"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tier:\n  gold: {}\n", "unknown keys ['tier']; put tiers under 'tiers:'"),
        ("tiers: [\n", "not valid YAML at line 2"),
        ("- gold\n", "expected a mapping of keys to values"),
        ("tiers: {}\n", "defines no tiers"),
        ("tiers:\n  gold: 5\n", "tier 'gold'"),
    ],
)
def test_a_malformed_tiers_file_is_one_line(tmp_path, text, expected):
    with pytest.raises(InvalidFieldError, match="tiers") as err:
        load_tiers(tiers_file(tmp_path, text))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_good_tiers_load_as_before(tmp_path):
    shipped = load_tiers(DEFAULT_TIERS_FILE)
    assert shipped["premium"].daily_chunks == 10_000 and shipped["premium"].weight == 2.0
    assert shipped["unlimited"].daily_chunks is None
    loaded = load_tiers(tiers_file(tmp_path, GOLD % "weight: 3, requests_per_minute: 6"))
    assert loaded["gold"].weight == 3 and loaded["gold"].reads_per_minute == 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n_workers: 1e4\n", "n_workers: must be a whole number, not '1e4'"),
        ("threads_per_worker: 2.0\n", "threads_per_worker: must be a whole number, not 2.0"),
        ("scheduler_port: 70000\n", "scheduler_port: must be less than or equal to 65535"),
        ("kind: cloud\n", "kind: must be 'local', 'local-cuda', 'address' or 'manager'"),
        ("memory_limit: 1.5\n", "memory_limit: must be a string or a whole number, not 1.5"),
        ("kind: local-cuda\ncuda_visible_devices: 0\n", 'not 0 (quote it: "0")'),
        ("n_worker: 2\n", "unknown keys ['n_worker']; known: ["),
        ("kind: [\n", "not valid YAML"),
        ("kind: address\n", "kind 'address' needs an address"),
    ],
)
def test_a_bad_cluster_spec_is_refused_at_load_naming_file_and_field(tmp_path, text, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(EmbedscaleError) as err:
        ClusterSpec.from_yaml(path)
    message = str(err.value)
    assert message.startswith(f"cluster spec {path}: ") and expected in message, message
    assert "\n" not in message


def test_the_shipped_cluster_specs_load():
    specs = {p.stem: ClusterSpec.from_yaml(p) for p in (ROOT / "cluster_specs").glob("*.yaml")}
    assert specs["local"] == ClusterSpec(dashboard_address=":8787")
    assert specs["slurm"].manager_options["cores"] == 8 and specs["slurm"].adaptive["maximum"]


def test_the_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("n_workers: 2.5\n")
    status = main(
        ["run", "src", "--table", "t", "--cluster", str(spec), "--data-dir", str(tmp_path / "d")]
    )
    err = capsys.readouterr().err
    assert status == 1 and err.startswith(f"embedscale: error: cluster spec {spec}: n_workers")
