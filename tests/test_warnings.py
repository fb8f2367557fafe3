"""Deprecations triggered in our own code fail the tests; those among libraries do not
(pyproject.toml, [tool.pytest.ini_options] filterwarnings)."""

from __future__ import annotations

import warnings

import pytest


def warn_from(module: str, category: type[Warning]) -> None:
    """A warning attributed to `module`, as `warnings.warn` attributes one to its caller."""
    warnings.warn_explicit("this API is going away", category, f"{module}.py", 1, module=module)


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize(
    "module",
    [
        "embedscale.engine.sink.lance_sink",
        "embedscale.jobs.runner.loop",
        "embedscale.api.server.routes.jobs",
        "embedscale",
        "embedscale.local_jobs",
    ],
)
def test_a_deprecation_in_our_code_is_an_error(module, category):
    with pytest.raises(category, match="going away"):
        warn_from(module, category)


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize(
    "module",
    ["pandas.core.frame", "distributed.worker", "engine", "api.routes", "jobs", "embedscaler"],
)
def test_a_deprecation_among_libraries_is_ignored(module, category):
    with warnings.catch_warnings(record=True) as seen:  # keeps the filters in force
        warn_from(module, category)
    assert seen == []
