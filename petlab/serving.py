"""Serving registered models: the production version of each task, read-only, with its own card's preprocessing.

`ServedModels` reads the registry on each request (a small JSON file) and loads a version the
first time it is asked for, so promoting or rolling back takes effect without a restart. It never
writes to the registry. Exported models are preferred (.pt2, then TorchScript); eager weights
are the last resort, so a server runs whatever the registry holds.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from petlab.data.images import load_rgb
from petlab.models.pet_view import SEPARATE_VIEW, PetView, verdict
from petlab.paths import relative_to_root
from petlab.registry.loaded import LoadedModel, load_version
from petlab.registry.store import Registry

log = logging.getLogger(__name__)
MAX_TOP_K = 100


class ServingError(Exception):
    """A request the server cannot serve; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ServedModels:
    def __init__(self, registry: Registry):
        self.registry = registry
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._lock = threading.Lock()
        self._pet_view: PetView | None = None

    @property
    def pet_view(self) -> PetView:
        """ImageNet's separate view of whether a photo shows a pet at all, for the versions that cannot answer
        from their own backbone; shared by every task, loaded the first time one needs it."""
        with self._lock:
            if self._pet_view is None:
                self._pet_view = PetView()
            return self._pet_view

    def classify(self, model: LoadedModel, image, top_k: int) -> dict:
        """The served answer for one decoded photo: the model's top-k, and whether it looks like a pet at all
        (from the model's own forward pass when its backbone is ImageNet's, else from the separate view)."""
        predictions, pet = model.predict_with_pet(image, top_k)
        judged = verdict(pet, model.pet_threshold) if pet is not None else \
            verdict(float(self.pet_view.pet_probability([image])[0]), SEPARATE_VIEW["threshold"])
        return {"task": model.task, "model": {"name": model.name, "version": model.version, "format": model.fmt},
                **judged, "predictions": predictions}

    def production(self) -> dict[str, int]:
        """task -> production version, for every task that has one."""
        out = {}
        for task in self.registry.tasks():
            entry = self.registry.production(task)
            if entry:
                out[task] = entry["version"]
        return out

    def model(self, task: str | None) -> LoadedModel:
        served = self.production()
        if task is None:
            if len(served) > 1:
                raise ServingError(400, "task_required",
                                   f"several tasks are served; pass task, one of {sorted(served)}")
            task = next(iter(served), None)
            if task is None:
                raise ServingError(503, "no_production_model",
                                   f"no production model in {self.registry.root}: train a run, then "
                                   "`python experiments/promote.py --task cats_vs_dogs`")
        if task not in served:
            known = set(self.registry.tasks())
            if task in known:
                raise ServingError(503, "no_production_model",
                                   f"{task} has no production version: `python experiments/promote.py --task {task}`"
                                   " (or --rollback VERSION)")
            raise ServingError(404, "unknown_task", f"unknown task {task!r}; served: {sorted(served) or 'none'}")
        key = (task, served[task])
        with self._lock:  # loading takes a second; concurrent first requests load once
            if key not in self._loaded:
                start = time.perf_counter()
                # a promotion or rollback replaced the version: forget the task's others
                self._loaded = {k: m for k, m in self._loaded.items() if k[0] != task}
                self._loaded[key] = load_version(self.registry, *key)
                log.info("loaded %s v%d (%s) in %.2fs", task, key[1], self._loaded[key].fmt,
                         time.perf_counter() - start)
            return self._loaded[key]

    def warm_up(self) -> None:
        """Load every production model (and the separate pet view, if one needs it) now, so the first request
        does not pay for it."""
        for task in self.production():
            try:
                if self.model(task).pet_module is None:
                    self.pet_view  # noqa: B018 - loads it
            except Exception as exc:  # noqa: BLE001 - a broken version must not stop the others being served
                log.error("could not load %s: %s", task, exc)

    def health(self) -> dict:
        served = self.production()
        models = {}
        for task, version in served.items():
            card = self.registry.card(task, version)
            loaded = self._loaded.get((task, version))
            models[task] = {"name": card["name"], "version": version, "arch": card["arch"],
                            "classes": len(card["classes"]), "format": loaded.fmt if loaded else "not loaded yet",
                            "not_a_pet": not_a_pet_check(card, loaded)}
        return {"status": "ok" if served else "no_production_model", "registry": shown_path(self.registry.root),
                "models": models}


def not_a_pet_check(card: dict, loaded: LoadedModel | None) -> dict:
    """What the health endpoint says of a version's "is this a pet?" check: the score, and its threshold."""
    own = (card.get("not_a_pet") or {}).get("view") == "own_backbone" and (loaded is None or loaded.pet_module)
    if own:
        entry = card["not_a_pet"]
        return {"score": f"ImageNet's head on this model's own {entry['arch']} backbone (ImageNet's weights, "
                         f"untouched): probability of a dog or cat class, at {entry['image_size']} px, same pass",
                "threshold": entry["threshold"]}
    return {"score": f"a separate ImageNet {SEPARATE_VIEW['arch']}: probability of a dog or cat class, at "
                     f"{SEPARATE_VIEW['image_size']} px", "threshold": SEPARATE_VIEW["threshold"]}


def parse_top_k(value) -> int:
    if value is None or value == "":
        return 5
    try:
        top_k = int(str(value))
    except ValueError:
        raise ServingError(422, "bad_top_k", f"top_k must be an integer from 1 to {MAX_TOP_K}, got {value!r}") from None
    if not 1 <= top_k <= MAX_TOP_K:
        raise ServingError(422, "bad_top_k", f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k}")
    return top_k


def decode_upload(data: bytes, filename: str | None = None):
    """Upload bytes -> RGB image, or a 4xx ServingError that says what is wrong with the file."""
    from petlab.data.images import BadImageError

    try:
        return load_rgb(data)
    except BadImageError as exc:
        what = {"empty": "the file is empty (zero bytes)",
                "not_an_image": "the file is not an image Pillow can read",
                "truncated": "the image is truncated (incomplete file)",
                "too_large": "the image has too many pixels (possible decompression bomb)",
                "corrupt": "the image data is corrupt"}[exc.reason]
        detail = f" ({exc.args[0].split(': ', 1)[-1]})" if exc.reason in ("too_large", "truncated") else ""
        raise ServingError(400, exc.reason, f"{filename or 'upload'}: {what}{detail}") from None


def shown_path(path: Path) -> str:
    """A path as strangers may see it: relative to the project root when under it, else only its name
    (an absolute path is this machine's business)."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    return str(relative_to_root(path) or path.name)
