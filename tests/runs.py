"""Running experiments/*.py as a user does (real subprocesses), and the shared real-photo runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class InProcessOnlyPopen(subprocess.Popen):
    """subprocess.Popen while a test without a process mark runs (conftest.py puts it in place for that test
    alone): it refuses petlab's own processes (a script, a server, torchrun), so the fast tier (bare `pytest`) stays in
    process however a test starts its child. What decides is who asks (`started_by_petlab`): a library's
    internal child, such as inductor's probe of the CPU on a machine's first compile, is not refused, and
    neither are other programs (git, lscpu, mount)."""

    def __init__(self, args, *rest, **kw):
        argv = [args] if isinstance(args, str | os.PathLike) else list(args)
        if starts_python(argv) and started_by_petlab():
            raise AssertionError(f"this test starts {' '.join(map(str, argv[:3]))}: mark it slow (or browser, "
                                 "postgres, distributed), so that the fast tier (bare `pytest`) stays in process")
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
    """The custom CNN and two shipped pretrained recipes on the shared cats-vs-dogs photos, shrunk to
    seconds, run as a user types them (tests/recipe.py's argv)."""
    from tests.recipe import Recipe, shipped

    short = {"train.epochs": 2, "train.limit_batches": 4, "train.batch_size": 32}
    recipes = {
        # the smoke command, at batch 4
        "custom_cnn": Recipe({"model.arch": "custom_cnn", "train.limit_batches": 2, "train.epochs": 1,
                              "train.batch_size": 4, "train.channels_last": True}),
        "lite0": shipped("lite0_cats_vs_dogs", short),
        "mobilenet_v2": shipped("mobilenet_v2_cats_vs_dogs", {
            **short, "model.weights": str(shared.parent / "weights/mobilenet_v2_from_qnnpack_float-52fff228.pth")}),
    }
    runs = {}
    for name, recipe in recipes.items():
        script("run.py", *recipe.on(shared / "cats_and_dogs_filtered").argv("--output-dir", out / name))
        runs[name] = only_run_dir(out / name)
    return runs
