"""The commit-time rule that keeps row ids unique within a table (pure, no cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field

from embedscale.jobs.policies.conflicts import clashing


@dataclass
class Written:
    doc_ids: list[str]
    replaced_doc_ids: list[str] = field(default_factory=list)


def test_a_result_writing_a_document_already_in_the_table_runs_again():
    results = [Written(["a", "b"]), Written(["c"])]
    assert clashing(results, in_table={"b"}) == [0]
    assert clashing(results, in_table=set()) == []


def test_an_upsert_may_write_the_documents_it_replaces_but_no_others():
    assert clashing([Written(["a"], replaced_doc_ids=["a"])], in_table={"a"}) == []
    assert clashing([Written(["a", "b"], replaced_doc_ids=["a"])], in_table={"a", "b"}) == [0]


def test_two_results_of_one_batch_writing_the_same_document_commit_only_the_first():
    results = [Written(["x"]), Written(["y", "x"]), Written(["y"]), Written(["z"])]
    # The second clashes with the first; the third's 'y' is free, since the second is not
    # committed; the fourth is independent.
    assert clashing(results, in_table=set()) == [1]
