"""Fixtures and the report of the adversarial suite (see harness.py)."""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir():
    # One compile cache for the session: each plugin is compiled once, later hosts start fast.
    d = tempfile.mkdtemp(prefix="wsplug-adversarial-cache-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def case(request, tmp_path, cache_dir):
    c = harness.Case(request.node.name.removeprefix("test_"), tmp_path, cache_dir)
    yield c
    c.teardown()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    c = item.funcargs.get("case") if hasattr(item, "funcargs") else None
    if c is None:
        return
    if report.when == "call":
        c.row["outcome"] = "pass" if report.passed else "FAIL"
        if report.failed:
            message = str(call.excinfo.value).splitlines()[0] if call.excinfo else ""
            c.note(message[:160])
    elif report.failed and c.row["outcome"] in ("?", "pass"):
        c.row["outcome"] = f"ERROR ({report.when})"


def pytest_terminal_summary(terminalreporter):
    if not harness.RESULTS:
        return
    text = harness.write_report()
    terminalreporter.write_sep("=", f"adversarial report (written to {harness.REPORT_PATH})")
    terminalreporter.write(text)
