import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a test may need beyond one process (pyproject.toml describes each). Bare `pytest` runs the rest, the
# fast tier; `pytest --full` (`make test`, what CI runs) runs everything.
NEEDS_MORE_THAN_A_PROCESS = {"slow", "browser", "postgres", "distributed"}
# Named on purpose (as .ci/run does): missing photos there are a failure, not a reason to skip.
DATA_DIR_NAMED = "PETLAB_DATA_DIR" in os.environ


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="the whole suite: also the tests marked " + ", ".join(sorted(NEEDS_MORE_THAN_A_PROCESS)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test without those marks runs (its setup, call and teardown) with subprocess.Popen refusing petlab's
    own Python processes (tests/runs.py InProcessOnlyPopen); every other test, and the session outside them,
    runs with the real one."""
    import subprocess

    from tests.runs import InProcessOnlyPopen

    if NEEDS_MORE_THAN_A_PROCESS & {mark.name for mark in item.iter_markers()}:
        return (yield)
    real, subprocess.Popen = subprocess.Popen, InProcessOnlyPopen
    try:
        return (yield)
    finally:
        subprocess.Popen = real


def pytest_collection_modifyitems(config, items):
    """A test that needs the shared real photos (the `shared` fixture, itself or through another fixture) is
    marked real_photos. Without --full or a -m of one's own, the tests that need more than a process are
    deselected: bare `pytest` is the fast tier."""
    for item in items:
        if "shared" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_photos)
    if config.getoption("--full") or config.getoption("-m"):
        return
    kept = [item for item in items if not NEEDS_MORE_THAN_A_PROCESS & {m.name for m in item.iter_markers()}]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def pytest_report_header(config):
    if not (config.getoption("--full") or config.getoption("-m")):
        return ["the fast tier (in process): `pytest --full` or `make test` runs the whole suite"]


def shared_data() -> Path:
    """The shared real photos: $PETLAB_DATA_DIR (as .ci/run sets it) or ../shared/data. Missing, a test that
    needs them skips, saying why, unless PETLAB_DATA_DIR named them: then it fails."""
    path = (REPO / os.environ.get("PETLAB_DATA_DIR", "../shared/data")).resolve()  # relative: to the repo
    if not (path / "cats_and_dogs_filtered").is_dir():
        why = f"shared real photos not found at {path}: `make test-data` builds them, or set PETLAB_DATA_DIR"
        if DATA_DIR_NAMED:
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_data()


@pytest.fixture(scope="session")
def tiny_photos(shared, tmp_path_factory) -> Path:
    """A small real-photo folder: the first 12 training photos of each class of the shared cats and dogs, and
    6 val and 4 test photos each from their validation split (a promotion verifies its exports on 11 or
    more val photos). Read only, like every session fixture."""
    import shutil

    source, root = shared / "cats_and_dogs_filtered", tmp_path_factory.mktemp("tiny_photos")
    for cls in ("cats", "dogs"):
        train, held_out = (sorted((source / split / cls).iterdir())[:n] for split, n in (("train", 12),
                                                                                       ("validation", 10)))
        for split, photos in (("train", train), ("val", held_out[:6]), ("test", held_out[6:])):
            (root / split / cls).mkdir(parents=True)
            for photo in photos:
                shutil.copyfile(photo, root / split / cls / photo.name)
    return root


@pytest.fixture(scope="session")
def tiny(tiny_photos):
    """The one tiny recipe (tests/recipe.py) on the small real-photo folder: every test shrinks from it,
    stating only how its run differs (`tiny.shrink({...})`, `tiny.on(other_folder)`)."""
    from tests.recipe import TINY, Recipe

    return Recipe(TINY, data=tiny_photos)


@pytest.fixture(scope="session")
def red_vs_blue(tmp_path_factory) -> Path:
    """Generated red and blue photos (tests/imaging.py), 16 a class in train, 8 in val, 4 in test: 32 training
    images are 4 batches of 8, or 1 of 32. Read only: runs write their caches and outputs elsewhere."""
    from tests.imaging import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("red_vs_blue"), {"train": 16, "val": 8, "test": 4})


@pytest.fixture(scope="session")
def real_runs(shared, tmp_path_factory) -> dict[str, Path]:
    """Three short real runs on the shared cats-vs-dogs photos, shared by the run and compare tests."""
    from tests.runs import real_photo_runs

    return real_photo_runs(shared, tmp_path_factory.mktemp("real_runs"))


@pytest.fixture(scope="session")
def promoted_registry(real_runs, tmp_path_factory) -> Path:
    """A registry whose cats_vs_dogs production model is the short real Lite0 run, promoted as a user does.

    The run is cloned first (sharing its checkpoints, with its own copy of its Comet archive), so the archive
    the promotion queues lands in the clone beside the training's, as in a user's run folder; tests only read
    this registry.
    """
    import shutil

    from tests.registry import clone_run
    from tests.runs import script

    promoted = tmp_path_factory.mktemp("promoted")  # runs/ beside registry/: tests find the Comet archives
    runs, registry = promoted / "runs", promoted / "registry"
    clone = clone_run(real_runs["lite0"], runs / real_runs["lite0"].name)
    shutil.copytree(real_runs["lite0"] / "comet", clone / "comet")
    script("promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--runs-root", runs)
    return registry


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Decoded-image caches go to a per-session temp folder, never into the repo's data/cache.
    os.environ["PETLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("PETLAB_DATA_DIR", str(REPO.parent / "shared" / "data"))
    yield
