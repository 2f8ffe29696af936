import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a test may need beyond one process (pyproject.toml describes each); `make test-fast` runs the rest.
NEEDS_MORE_THAN_A_PROCESS = {"slow", "browser", "postgres", "distributed"}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures: tests/runs.py refuses to start a process for a test without those marks."""
    from tests.runs import IN_PROCESS_ONLY

    marked = NEEDS_MORE_THAN_A_PROCESS & {mark.name for mark in item.iter_markers()}
    os.environ[IN_PROCESS_ONLY] = "0" if marked else "1"


def shared_data() -> Path:
    """The shared real photos: $PETLAB_DATA_DIR (as .ci/run sets it) or ../shared/data."""
    path = (REPO / os.environ.get("PETLAB_DATA_DIR", "../shared/data")).resolve()  # relative: to the repo
    assert (path / "cats_and_dogs_filtered").is_dir(), f"shared real photos not found at {path}"
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_data()


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

    The run is cloned first (sharing its checkpoints), so the Comet archive the promotion queues
    lands in the clone; tests only read this registry.
    """
    from tests.registry import clone_run
    from tests.runs import script

    runs = tmp_path_factory.mktemp("promoted_runs")
    clone_run(real_runs["lite0"], runs / real_runs["lite0"].name)
    registry = tmp_path_factory.mktemp("registry")
    script("promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--runs-root", runs)
    return registry


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Decoded-image caches go to a per-session temp folder, never into the repo's data/cache.
    os.environ["PETLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("PETLAB_DATA_DIR", str(REPO.parent / "shared" / "data"))
    yield
