import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a test may need beyond one process (pyproject.toml describes each); `make test-fast` runs the rest.
NEEDS_MORE_THAN_A_PROCESS = {"slow", "browser", "postgres", "distributed"}


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
    marked real_photos: `make test-fast` on a clone without them deselects those, saying so."""
    for item in items:
        if "shared" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_photos)


def shared_data() -> Path:
    """The shared real photos: $PETLAB_DATA_DIR (as .ci/run sets it) or ../shared/data."""
    path = (REPO / os.environ.get("PETLAB_DATA_DIR", "../shared/data")).resolve()  # relative: to the repo
    assert (path / "cats_and_dogs_filtered").is_dir(), \
        f"shared real photos not found at {path}: `make test-data` builds them, or set PETLAB_DATA_DIR to a copy"
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
