"""The scheduling policy, without a cluster or a database."""

from collections import Counter

from embedscale.jobs.policies.scheduling import JobView, choose, dask_priority, effective_priority


def job(
    job_id, tenant="a", priority="normal", weight=1.0, submitted=0.0, runnable=100, in_flight=0
):
    return JobView(job_id, tenant, priority, weight, submitted, runnable, in_flight)


def test_higher_priority_band_takes_the_free_slots():
    big_low = job("big", "a", "low", runnable=1000, in_flight=2)
    small_high = job("small", "b", "high", submitted=10.0, runnable=3)
    assert choose([big_low, small_high], 4, now=20.0, per_job_cap=8) == [
        "small",
        "small",
        "small",
        "big",
    ]


def test_equal_tenants_alternate_and_share_evenly():
    a, b = job("ja", "a"), job("jb", "b", submitted=1.0)
    picks = choose([a, b], 10, now=5.0, per_job_cap=100)
    assert Counter(picks) == {"ja": 5, "jb": 5}
    assert picks[:4] == ["ja", "jb", "ja", "jb"]


def test_a_tenant_with_many_jobs_gets_no_more_than_one_with_one_job():
    jobs = [job(f"a{i}", "a", submitted=i) for i in range(5)] + [job("b0", "b", submitted=9)]
    counts = Counter(job_id[0] for job_id in choose(jobs, 12, now=10.0, per_job_cap=100))
    assert counts == {"a": 6, "b": 6}


def test_weights_share_in_proportion():
    premium, free = job("p", "p", weight=2.0), job("f", "f")
    counts = Counter(choose([premium, free], 9, now=0.0, per_job_cap=100))
    assert counts == {"p": 6, "f": 3}


def test_per_job_cap_and_runnable_bound_the_picks():
    assert choose([job("a", runnable=2)], 10, 0.0, per_job_cap=8) == ["a", "a"]
    assert choose([job("a", in_flight=3)], 10, 0.0, per_job_cap=4) == ["a"]
    assert choose([], 5, 0.0, per_job_cap=4) == []


def test_waiting_raises_priority_but_never_above_a_fresh_critical_job():
    old_low = job("old", priority="low", submitted=0.0)
    assert effective_priority(old_low, now=600.0) == 1.0
    assert effective_priority(old_low, now=10_000.0) == 1.5
    fresh_normal = job("new", "b", submitted=600.0)
    # After ten minutes the low job competes in the normal band, on fair share.
    assert set(choose([old_low, fresh_normal], 2, now=600.0, per_job_cap=8)) == {"old", "new"}
    critical = job("crit", "c", priority="critical", submitted=10_000.0)
    assert choose([old_low, critical], 1, now=10_000.0, per_job_cap=8) == ["crit"]
    assert dask_priority(critical, 10_000.0) > dask_priority(old_low, 10_000.0)
