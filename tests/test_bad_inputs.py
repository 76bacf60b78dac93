"""Runs tests/bad_inputs.py in a subprocess: every case must raise the expected
Python exception with a message naming the problem, and none may crash the
interpreter (a signal or a missing result fails the case)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bad_inputs  # noqa: E402

_results = None


def results():
    global _results
    if _results is None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.run([sys.executable, "-X", "faulthandler", os.path.join(HERE, "bad_inputs.py")],
                              capture_output=True, text=True, timeout=600, env=env)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        _results = ({r["case"]: r for r in lines if r["status"] != "started"}, proc, lines)
    return _results


def test_suite_did_not_crash():
    done, proc, lines = results()
    last = lines[-1]["case"] if lines else None
    assert proc.returncode == 0, f"crashed (returncode {proc.returncode}) during case {last!r}:\n{proc.stderr[-2000:]}"
    assert len(done) == len(bad_inputs.CASES) >= 100


@pytest.mark.parametrize("name", [c[0] for c in bad_inputs.CASES])
def test_bad_input_raises_clear_error(name):
    done, proc, _ = results()
    assert name in done, f"no result (crash?): {proc.stderr[-2000:]}"
    assert done[name]["status"] == "ok", done[name]
