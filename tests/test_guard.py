"""The in-process tier's guard (tests/runs.py InProcessOnlyPopen): it refuses petlab's own processes to a test
without a process mark, and lets a library's internal child through, as on a machine that never compiled."""

import subprocess
import sys

import pytest

from tests.runs import REPO


def test_a_script_of_petlab_started_by_an_unmarked_test_is_refused():
    with pytest.raises(AssertionError, match="mark it slow"):
        subprocess.run([sys.executable, str(REPO / "experiments/run.py"), "--help"], capture_output=True)


def test_a_library_probe_is_not_refused(tmp_path):
    """Inductor's first compile on a fresh machine dlopens its ISA test library in a child Python
    (torch/_inductor/cpu_vec_isa.py, _probe_load); the guard once refused it, so `make test` failed on every
    machine whose inductor cache was empty. Here the real probe runs on a library that is not there: it
    answers False (the child could not load it) instead of the guard's AssertionError."""
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    isa = next(iter(valid_vec_isa_list()), None)
    assert isa is not None, "this CPU has no vector ISA inductor knows"
    assert isa._probe_load(str(tmp_path / "missing.so")) is False
