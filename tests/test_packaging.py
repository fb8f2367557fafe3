"""One installed package: `embedscale`, with the engine, the control plane and the front doors
as its sub-packages (engine/, jobs/ and api/ at the repository's root, linked in as
embedscale/engine, embedscale/jobs and embedscale/api). Nothing installs as a top-level
`engine`, `jobs` or `api`, so a user's own folder of that name shadows nothing of ours."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engine", "jobs", "api")


def test_the_layers_are_sub_packages_of_embedscale_and_nothing_else_is_importable(tmp_path):
    for name in LAYERS:  # a user's folders of those names, in the working directory
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user\\'s own')\n")
    script = (
        "import importlib, importlib.util, pkgutil, sys\n"
        "import embedscale.engine, embedscale.jobs, embedscale.api\n"
        "names = [m.name for p in (embedscale.engine, embedscale.jobs, embedscale.api)\n"
        "         for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('engine', 'jobs', 'api'))\n"
        "print(len(names), leaked)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    count, leaked = out.stdout.split(" ", 1)
    assert int(count) > 100 and leaked.strip() == "[]"


def test_every_folder_of_modules_is_a_package():
    # setuptools installs packages (folders with __init__.py): a folder of modules without one
    # would be left out of the wheel and fail only on a user's machine.
    missing = [
        str(d.relative_to(ROOT))
        for layer in LAYERS
        for d in (ROOT / layer).rglob("*")
        if d.is_dir()
        and d.name != "__pycache__"
        and any(d.glob("*.py"))
        and not (d / "__init__.py").exists()
    ]
    assert missing == []


def test_the_wheel_holds_one_top_level_package_with_its_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("embedscale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"embedscale"}
    for expected in (
        "embedscale/engine/sink/lance_sink.py",
        "embedscale/jobs/service.py",
        "embedscale/api/server/app.py",
        "embedscale/jobs/tenants/tiers.yaml",
        "embedscale/engine/models/calibration_texts.json",  # precision auto's sample
        "embedscale/__main__.py",
    ):
        assert expected in names


def test_python_dash_m_embedscale_is_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "embedscale", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "usage: embedscale" in out.stdout
