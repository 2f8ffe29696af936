"""Running experiments/*.py as a user does (real subprocesses), and the shared real-photo runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Set by conftest.py for each test: "1" while a test carries none of the marks that allow processes.
IN_PROCESS_ONLY = "PETLAB_TEST_IN_PROCESS_ONLY"


class InProcessOnlyPopen(subprocess.Popen):
    """subprocess.Popen for the test session (conftest.py installs it): it refuses petlab's own processes (a
    script, a server, torchrun) to a test without a mark that allows one, so `make test-fast` stays in process
    however a test starts its child. What decides is who asks (`started_by_petlab`): a library's internal
    child, such as inductor's probe of the CPU on a machine's first compile, is not refused, and neither are
    other programs (git, lscpu, mount)."""

    def __init__(self, args, *rest, **kw):
        argv = [args] if isinstance(args, str | os.PathLike) else list(args)
        if os.environ.get(IN_PROCESS_ONLY) == "1" and starts_python(argv) and started_by_petlab():
            raise AssertionError(f"this test starts {' '.join(map(str, argv[:3]))}: mark it slow (or browser, "
                                 "postgres, distributed), so that `make test-fast` stays in process")
        super().__init__(args, *rest, **kw)


def starts_python(argv: list) -> bool:
    """A Python interpreter, or a console script that runs one (torchrun, uvicorn) from this environment."""
    program = Path(str(argv[0]))
    return str(program) == sys.executable or program.name.startswith("python") or (
        program.parent == Path(sys.executable).parent)


def started_by_petlab() -> bool:
    """True when the code that called subprocess is this repository's (its tests, petlab, its scripts), not a
    library's: the innermost frame outside the standard library's subprocess module decides."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in (__file__, subprocess.__file__):
        frame = frame.f_back
    if frame is None:
        return False
    caller = Path(frame.f_code.co_filename).resolve()
    return caller.is_relative_to(REPO) and not caller.is_relative_to(Path(sys.prefix).resolve())


def script(name, *args, check=True, **kw):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def only_run_dir(out: Path) -> Path:
    (run_dir,) = list(out.iterdir())
    return run_dir


def read_metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def real_photo_runs(shared: Path, out: Path) -> dict[str, Path]:
    """The custom CNN and two pretrained recipes on the shared cats-vs-dogs photos, shrunk to seconds."""
    data = shared / "cats_and_dogs_filtered"
    recipes = {
        # the smoke command, at batch 4
        "custom_cnn": ["--arch", "custom_cnn", "--limit-batches", "2", "--epochs", "1", "--batch-size", "4",
                       "--channels-last"],
        "lite0": ["--config", REPO / "experiments/configs/lite0_cats_vs_dogs.yaml", "--epochs", "2",
                  "--limit-batches", "4", "--batch-size", "32"],
        "mobilenet_v2": ["--config", REPO / "experiments/configs/mobilenet_v2_cats_vs_dogs.yaml", "--epochs", "2",
                         "--limit-batches", "4", "--batch-size", "32",
                         "--weights", shared.parent / "weights/mobilenet_v2_from_qnnpack_float-52fff228.pth"],
    }
    runs = {}
    for name, args in recipes.items():
        script("run.py", *args, "--data-dir", data, "--output-dir", out / name)
        runs[name] = only_run_dir(out / name)
    return runs
