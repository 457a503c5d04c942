"""With CI=true no test skips silently: tests/conftest.py turns every skip but a by-design one into a failure."""

import os
import re
import subprocess
import sys
import textwrap

from tests.conftest import REPO

CASES = textwrap.dedent("""
    import pytest
    from tests.conftest import need, need_module, skip_by_design

    def test_need_data():
        need(False, "data absent")

    def test_need_module():
        need_module("no_such_module_for_kd_noise")

    @pytest.mark.skipif(True, reason="a marker")
    def test_skipif_marker():
        pass

    def test_bare_skip():
        pytest.skip("bare")

    @pytest.fixture
    def engine():
        pytest.skip("no engine")

    def test_skip_in_fixture(engine):
        pass

    def test_by_design():
        skip_by_design("needs a GPU")

    def test_present():
        need(True, "present")

    @pytest.mark.xfail(reason="known", strict=True)
    def test_expected_failure():
        assert False
""")
MODULE_SKIP = "import pytest\npytest.importorskip('no_such_module_for_kd_noise')\n\ndef test_x():\n    pass\n"


def outcomes(tmp_path, ci):
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    # tests/conftest.py as a plugin, in a folder with no pytest config (no addopts from pyproject.toml)
    run = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rA", "-p", "tests.conftest", "-p", "no:cacheprovider",
                          "--continue-on-collection-errors", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    found = dict(re.findall(r"::(\w+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL)", run.stdout))
    return run, found


def test_without_ci_missing_resources_skip(tmp_path):
    run, found = outcomes(tmp_path, ci=False)
    assert found == {"test_need_data": "SKIPPED", "test_need_module": "SKIPPED", "test_skipif_marker": "SKIPPED",
                     "test_bare_skip": "SKIPPED", "test_skip_in_fixture": "SKIPPED", "test_by_design": "SKIPPED",
                     "test_present": "PASSED", "test_expected_failure": "XFAIL"}, run.stdout
    assert run.returncode == 0, run.stdout


def test_under_ci_every_skip_but_a_by_design_one_fails(tmp_path):
    run, found = outcomes(tmp_path, ci=True)
    # a skipif marker or a skipping fixture acts in the setup phase: an error rather than a failure
    assert found == {"test_need_data": "FAILED", "test_need_module": "FAILED", "test_skipif_marker": "ERROR",
                     "test_bare_skip": "FAILED", "test_skip_in_fixture": "ERROR", "test_by_design": "SKIPPED",
                     "test_present": "PASSED", "test_expected_failure": "XFAIL"}, run.stdout
    assert "data absent (CI=true" in run.stdout and "needs a GPU" in run.stdout
    assert re.search(r"ERROR .*test_module_skip\.py", run.stdout), run.stdout  # a module-level skip fails too
    assert run.returncode == 1, run.stdout
