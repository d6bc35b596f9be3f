"""CI fails on a skip that is not a GPU test's (tests/ci_skips.py); a developer's run only counts them."""
import os
import subprocess
import sys
from types import SimpleNamespace

from ci_skips import skips_by_reason
from conftest import REPO

SUITE = '''
import pytest
from ci_skips import require

@pytest.mark.gpu
def test_gpu():
    pytest.skip("needs a CUDA GPU")

def test_cluster():
    require(False, "no cluster here")

def test_runs():
    pass
'''


def run_suite(tmp_path, ci: bool, suite: str = SUITE):
    (tmp_path / "conftest.py").write_text("from ci_skips import pytest_sessionfinish, pytest_terminal_summary\n")
    (tmp_path / "test_suite.py").write_text(suite)
    env = {k: v for k, v in os.environ.items() if k != "VJEPA_CI"}
    env.update(PYTHONPATH=str(REPO / "tests"), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **({"VJEPA_CI": "1"} if ci else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--rootdir", str(tmp_path), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_skips_are_counted_and_only_gpu_ones_are_allowed():
    def report(reason, *marks):
        return SimpleNamespace(longrepr=("f.py", 1, f"Skipped: {reason}"), keywords=dict.fromkeys(marks, 1))

    allowed, other = skips_by_reason([report("needs a CUDA GPU", "gpu"), report("needs a CUDA GPU", "gpu"),
                                      report("no cluster"), report("no cluster", "slow")])
    assert allowed == {"needs a CUDA GPU": 2} and other == {"no cluster": 2}


def test_a_developer_run_skips_and_passes(tmp_path):
    out = run_suite(tmp_path, ci=False)
    assert out.returncode == 0, out.stdout
    assert "1 passed, 2 skipped" in out.stdout and "skipped tests by reason" in out.stdout
    assert "no cluster here" in out.stdout and "needs a CUDA GPU  [gpu: allowed in CI]" in out.stdout


def test_ci_fails_a_missing_part_and_any_non_gpu_skip(tmp_path):
    out = run_suite(tmp_path, ci=True)
    assert out.returncode == 1, out.stdout
    assert "1 failed, 1 passed, 1 skipped" in out.stdout and "CI must provide it" in out.stdout
    # a plain skip (not through `require`) fails the CI run too, with the count
    out = run_suite(tmp_path, ci=True, suite="import pytest\n\ndef test_other():\n    pytest.skip('not today')\n")
    assert out.returncode == 1 and "1 non-GPU test(s) skipped" in out.stdout, out.stdout
