"""Skips: fine on a developer's machine, not in CI.

`.ci/run` sets VJEPA_CI=1. Then a real part the tests need that is missing (the SLURM cluster, the openclipart
packages) fails its tests instead of skipping them (`require`), and the run fails if any test other than a GPU
one (marked `gpu`: they run with `pytest -m gpu` on a GPU machine, .ci/gpu_check.sh) was skipped. Every run
ends with its skips counted by reason. conftest.py installs the two hooks.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest

CI_ENV = "VJEPA_CI"
ALLOWED_IN_CI = "gpu"  # the marker of the only tests that may skip in CI


def in_ci() -> bool:
    return os.environ.get(CI_ENV) == "1"


def require(available: bool, reason: str) -> None:
    """Skip the test when a real part it needs is missing; in CI, fail it."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason} ({CI_ENV}=1: CI must provide it, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def skips_by_reason(reports) -> tuple[Counter, Counter]:
    """(skips allowed in CI, skips not allowed in CI), each counted per reason."""
    allowed, other = Counter(), Counter()
    for report in reports:
        (allowed if ALLOWED_IN_CI in getattr(report, "keywords", {}) else other)[skip_reason(report)] += 1
    return allowed, other


def _skip_reports(config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if reporter is not None else []


def pytest_sessionfinish(session, exitstatus):
    if in_ci() and exitstatus == pytest.ExitCode.OK and skips_by_reason(_skip_reports(session.config))[1]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    allowed, other = skips_by_reason(terminalreporter.stats.get("skipped", []))
    if not allowed and not other:
        return
    terminalreporter.section("skipped tests by reason")
    for reason, n in allowed.most_common():
        terminalreporter.write_line(f"{n:5d}  {reason}  [{ALLOWED_IN_CI}: allowed in CI]")
    for reason, n in other.most_common():
        terminalreporter.write_line(f"{n:5d}  {reason}")
    if in_ci() and other:
        terminalreporter.write_line(f"{CI_ENV}=1: {sum(other.values())} non-GPU test(s) skipped; only tests marked "
                                    f"{ALLOWED_IN_CI} may skip in CI, so this run fails", red=True, bold=True)
