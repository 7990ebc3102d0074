"""The dispatch benchmark still runs end to end (a tiny campaign): its floor is built from the
runner's own internals, so a change there must not leave ``make bench`` broken unnoticed.
Speed is not asserted here (benchmarks measure it); exactly-once and completion are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BACKEND

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.dispatch", "--profile", "quick", "-n", "400", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    assert "PASS  simulator saw each of 400 recipients once (400 mails, 400 distinct)" in out, out
    assert "PASS  campaign completed (completed)" in out, out
    assert "efficiency engine/floor:" in out, out
    return out


def test_dispatch_benchmark_runs_and_checks_exactly_once():
    _run("--db", "sqlite")


@pytest.mark.skipif(BACKEND != "postgres", reason="worker processes share a campaign on PostgreSQL only")
def test_dispatch_benchmark_with_worker_processes():
    """``--processes``: separate worker processes (as Celery's) share the campaign."""
    out = _run("--db", "postgres", "--processes", "2", "--workers", "1")
    assert "processes=2" in out, out
