"""Hostile sources: links out of the allowed roots, FIFOs, devices, endless and huge files. Each
is skipped with its reason, on the driver while planning and on the worker when opening; none
hangs or exhausts a process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from embedscale.engine.sources.enumeration import plan_source
from embedscale.engine.sources.file_access import FileAccess, real_roots
from embedscale.engine.sources.partitions import FileSlice
from embedscale.engine.sources.readers import RecordFields, read_item

SECRET = "canary-outside-the-root"
OUTSIDE = "a link to a path outside the allowed roots"


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed root with good files and every kind of escape; a secret folder outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "docs").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "x.txt").write_text(SECRET)
    (root / "docs" / "good.txt").write_text("an ordinary document inside the root")
    (root / "docs" / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "docs" / "inside-link.txt").symlink_to(root / "docs" / "good.txt")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    return root, outside


def files_of(plan) -> list[str]:
    return [i.relpath for p in plan.partitions for i in p.items]


def reasons_of(plan) -> dict[str, str]:
    return {s.source: s.reason for s in plan.skipped}


def test_links_out_of_the_root_are_skipped_when_walking(tree):
    root, _ = tree
    plan = plan_source(root, access=FileAccess(real_roots([root])))
    assert files_of(plan) == ["docs/good.txt", "docs/inside-link.txt"]
    assert reasons_of(plan) == {"docs/leak.txt": OUTSIDE, "dirlink": OUTSIDE}


@pytest.mark.parametrize(
    "pattern", ["*/*.txt", "**/*.txt", "dirlink*/x.txt", "*/secret.txt", "docs/../dirlink/*.txt"]
)
def test_links_out_of_the_root_are_skipped_by_globs(tree, pattern):
    root, _ = tree
    try:
        plan = plan_source(str(root / pattern), access=FileAccess(real_roots([root])))
    except Exception as exc:  # nothing left to read is an error, never a read of the secret
        assert "no supported files" in str(exc) or "matches no files" in str(exc)
        return
    for item in (i for p in plan.partitions for i in p.items):
        assert os.path.realpath(item.path).startswith(str(root) + os.sep)
    assert all(r == OUTSIDE for r in reasons_of(plan).values())


def test_globs_do_not_follow_folder_links_round_in_circles(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "loop1").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "loop2").symlink_to(tmp_path, target_is_directory=True)
    plan = plan_source(str(tmp_path / "**" / "*.txt"))  # glob.glob: 2^depth directories
    assert files_of(plan) == ["a.txt"]


def test_a_link_swapped_in_after_planning_is_refused_by_the_worker(tree):
    root, outside = tree
    access = FileAccess(real_roots([root]))
    doc = root / "docs" / "swapped.txt"
    doc.write_text("planned while harmless")
    [partition] = plan_source(root / "docs" / "swapped.txt", access=access).partitions
    doc.unlink()
    doc.symlink_to(outside / "secret.txt")  # the tenant swaps it before the worker reads
    docs, skipped = read_item(partition.items[0], RecordFields(), access)
    assert docs == [] and [s.reason for s in skipped] == [OUTSIDE]


@pytest.mark.timeout(20)
def test_fifos_and_devices_are_never_opened_for_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    (tmp_path / "ok.md").write_text("# fine")
    plan = plan_source(tmp_path)
    assert files_of(plan) == ["ok.md"]
    assert reasons_of(plan) == {
        "pipe.txt": "a FIFO, not a regular file",
        "zero.txt": "a character device, not a regular file",
    }
    # A worker handed either (swapped in after planning) refuses it at once instead of
    # blocking on the FIFO or reading /dev/zero until the worker is killed.
    for name, fmt in (
        ("pipe.txt", "text"),
        ("zero.txt", "text"),
        ("zero.txt", "jsonl"),
        ("pipe.txt", "parquet"),
    ):
        docs, skipped = read_item(FileSlice(str(tmp_path / name), name, fmt, 0), RecordFields())
        assert docs == [] and "not a regular file" in skipped[0].reason


def test_files_outside_the_roots_are_refused_even_through_proc(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "status.txt").symlink_to("/proc/self/status")
    item = FileSlice(str(root / "status.txt"), "status.txt", "text", 0)
    _, skipped = read_item(item, RecordFields(), FileAccess(real_roots([root])))
    assert skipped[0].reason == OUTSIDE


def test_documents_over_the_size_limit_are_skipped_with_their_size(tmp_path):
    access = FileAccess(max_document_bytes=1000)
    (tmp_path / "big.txt").write_text("word " * 400)
    (tmp_path / "small.txt").write_text("word " * 10)
    rows = [{"id": "long", "text": "x " * 2000}, {"id": "short", "text": "fine"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = plan_source(tmp_path, access=access)
    read = [read_item(i, RecordFields(), access) for p in plan.partitions for i in p.items]
    docs = sorted(d.doc_id for ds, _ in read for d in ds)
    skipped = {s.source: s.reason for _, ss in read for s in ss}
    assert docs == ["short", "small.txt"]
    assert skipped == {
        "big.txt": "2,000 bytes, over the limit of 1,000 bytes per document (max_document_bytes)",
        "rows.jsonl#0": "more bytes, over the limit of 1,000 bytes per document "
        "(max_document_bytes)",
    }


def test_proc_files_without_a_size_are_still_bounded(tmp_path):
    item = FileSlice("/proc/self/maps", "maps", "text", 0)
    _, skipped = read_item(item, RecordFields(), FileAccess(max_document_bytes=16))
    assert "over the limit of 16 bytes" in skipped[0].reason


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tenant_cannot_read_outside_the_roots_or_stall_the_service(server, tmp_path):
    """Over the real API: a folder of links out of the root, a FIFO and /dev/zero; the job
    ends, every trap is reported, and no search ever returns the outside file's text."""
    from tests.test_api import finished, wait_job

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{SECRET} root:x:0:0")
    folder = server.root / "hostile"
    folder.mkdir()
    (folder / "good.txt").write_text("an ordinary document about heaps and queues")
    (folder / "leak.txt").symlink_to(outside / "secret.txt")
    (folder / "passwd.txt").symlink_to("/etc/passwd")
    (folder / "dirlink").symlink_to(outside, target_is_directory=True)
    os.mkfifo(folder / "pipe.txt")
    (folder / "zero.txt").symlink_to("/dev/zero")
    client = server.tenant("prowler")
    reasons = {}
    for n, source in enumerate(
        [str(folder), str(folder / "**" / "*.txt"), str(folder / "dirlink*" / "*.txt")]
    ):
        created = client.post("/v1/jobs", json={"table": f"h{n}", "source": source})
        if created.status_code == 422:  # nothing left to read once the traps are skipped
            assert n == 2 and "no supported files" in created.text, created.text
            continue
        assert created.status_code == 201, created.text
        job = wait_job(client, created.json()["id"], finished, timeout=120)
        assert job["status"] == "succeeded" and job["documents_done"] == 1, job
        reasons.update({s["source"].split("/")[-1]: s["reason"] for s in job["skipped"]})
        hits = client.post(f"/v1/tables/h{n}/search", json={"query": "root:x:0:0", "k": 10})
        assert hits.status_code == 200
        assert all(
            SECRET not in h["text"] and "root:" not in h["text"] for h in hits.json()["hits"]
        )
    assert reasons == {
        "leak.txt": OUTSIDE,
        "passwd.txt": OUTSIDE,
        "dirlink": OUTSIDE,
        "pipe.txt": "a FIFO, not a regular file",
        "zero.txt": "a character device, not a regular file",
    }
    # Another tenant's small job still goes through at once.
    other = server.tenant("bystander")
    created = other.post("/v1/jobs", json={"table": "t", "texts": ["still fine"]}).json()
    assert wait_job(other, created["id"], finished, timeout=60)["status"] == "succeeded"
