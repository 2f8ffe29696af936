"""Progress in a redirected log: a line now and then, never a bar's carriage returns (a 10-epoch run once wrote
44.6 KB of redrawn bars into a log beside its 21-line train.log)."""

import time

from petlab import progress


def test_a_log_gets_a_plain_line_each_tenth_of_long_work_and_nothing_for_short_work(monkeypatch, capsys):
    monkeypatch.setattr(progress, "QUIET_S", 0.2)
    monkeypatch.setattr(progress, "MIN_GAP_S", 0.0)
    for _ in progress.progress(range(3), desc="short", unit="photo"):  # under QUIET_S: silent
        pass
    for _ in progress.progress(range(40), desc="long", unit="photo"):
        time.sleep(0.01)
    with progress.progress(total=4, desc="bytes", unit="B") as bar:
        time.sleep(0.25)
        bar.update(4)
    err = capsys.readouterr().err
    assert "\r" not in err and "short" not in err
    lines = err.splitlines()
    assert 1 <= sum("long:" in line for line in lines) <= 10 and "long: 40/40 photo (100%)" in err
    assert "bytes: 4/4 B (100%)" in err
