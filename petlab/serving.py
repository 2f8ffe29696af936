"""Serving registered models: the production version of each task, read-only, with its own card's preprocessing.

`ServedModels` reads the registry on each request (a small JSON file) and loads a version the
first time it is asked for, so promoting or rolling back takes effect without a restart. It never
writes to the registry. It predicts through petlab/inference: the ONNX exports on ONNX Runtime, with
no torch import (the Hugging Face Space installs no torch), and nothing else: a registry's PyTorch
exports run code when loaded (torch.export exec()s its guards, TorchScript its code), so a version whose
ONNX files are missing or refused is not served (503), and /api/health says why.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from petlab.data.images import BadImageError, load_rgb
from petlab.inference.model import LoadedModel, load_version, torch_first
from petlab.inference.pet import SEPARATE_VIEW, SEPARATE_VIEW_FILE, SeparateView, verdict
from petlab.paths import relative_to_root
from petlab.registry.store import Registry

log = logging.getLogger(__name__)
MAX_TOP_K = 100

# What one upload may cost to decode, counted by the largest buffer the path allocates (a 265 KB PNG can be
# 8000 x 8000 RGBA, 256 MB decoded; a 1 MB progressive JPEG of 9450 x 9450 holds 536 MB of coefficients
# however small it is decoded). The models see at most ~300 px of the photo's centre, so:
# - JPEGs are decoded at reduced size (DCT scaling); other formats are shrunk right after decoding to
#   1024-2047 px on their long side, converting a strip at a time where a mode cannot be shrunk as it is;
# - only the centre of a photo longer than SERVING_MAX_ASPECT:1 is kept, before any resize (the model's
#   centre crop never sees the rest: its answer is the same), so no resize can blow a thin image up;
# - images over 40 MP, or over 160 MB decoded (pixels times what Pillow stores each in, or a progressive
#   JPEG's full-size coefficients), are refused from their header.
# Decodes share a memory budget (DecodeBudget): one heavy decode at a time, and ordinary photos pass a
# waiting heavy one, so RSS stays bounded and ordinary requests keep their pace however many hostile ones
# arrive. CPU: decoding is linear in the pixels, so the 40 MP bound is the CPU bound too (the slowest
# accepted photo, a 36 MP PNG, about 2 s of a core, is measured by benchmarks/hostile_load.py).
# docs/demo.md#hostile-load.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG's plugin also opens phones' MPO files
SERVING_MAX_SIDE = 1024
SERVING_MAX_PIXELS = 40_000_000
SERVING_MAX_ASPECT = 4.0  # long side over short side kept of a photo (its centre)
SERVING_MAX_DECODED_BYTES = 160 * 2**20  # 40 MP of RGB(A); 16-bit grayscale takes 2 bytes a pixel, palette 1
HEAVY_DECODE_BYTES = 32 * 2**20  # an ordinary photo's decode is under this (a 12 MP JPEG's reduced decode: 3 MB)


class DecodeBudget:
    """The memory decodes may hold at once, shared by every request. A decode reserves what its image costs
    decoded (known from the header) and waits while that is not free. At most one heavy decode (over
    `heavy_bytes`) runs at a time, so the others, ordinary photos, always find room and a core: hostile
    uploads queue behind each other, not in front of everyone else."""

    def __init__(self, total_bytes: int, heavy_bytes: int):
        self.total_bytes, self.heavy_bytes = total_bytes, heavy_bytes
        self.free, self.heavy_running = total_bytes, False
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int):
        heavy = nbytes > self.heavy_bytes
        with self._changed:
            self._changed.wait_for(lambda: self.free >= nbytes and not (heavy and self.heavy_running))
            self.free -= nbytes
            self.heavy_running = self.heavy_running or heavy
        try:
            yield
        finally:
            with self._changed:
                self.free += nbytes
                self.heavy_running = self.heavy_running and not heavy
                self._changed.notify_all()


DECODE_BUDGET = DecodeBudget(2 * SERVING_MAX_DECODED_BYTES, HEAVY_DECODE_BYTES)


def return_freed_memory_promptly() -> bool:
    """Make glibc hand large freed blocks (a decoded photo) straight back to the OS.

    By default glibc raises its mmap threshold after the first large free, so later decodes are
    served from per-thread heaps that keep their pages: measured on 10 concurrent 36 MP PNGs, peak
    RSS grew 2.4 GB with two decodes at a time, against 0.56 GB once blocks over 1 MB are always mapped and
    unmapped. Process-wide, so the server calls it once at start. False where libc is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 1 << 20))  # M_MMAP_THRESHOLD (glibc's malloc.h), 1 MB
    except (OSError, AttributeError):
        return False


class ServingError(Exception):
    """A request the server cannot serve; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


RETRY_FAILED_LOAD_S = 30.0


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"():,;]+/)+([^\s/'\"():,;]+)")


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part: what strangers may read of an error."""
    return ABSOLUTE_PATH.sub(r"\1", text)


def unavailable(key: tuple[str, int], reason: str) -> str:
    return (f"{key[0]} v{key[1]} could not be loaded ({without_paths(reason)}); the server retries it every "
            f"{RETRY_FAILED_LOAD_S:.0f} s. Check the version's files in the registry, or roll back")


class ServedModels:
    def __init__(self, registry: Registry):
        self.registry = registry
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._lock = threading.Lock()  # held only to read or swap the dictionaries, never while loading
        self._loading: dict[tuple[str, int], threading.Lock] = {}  # one per version: its first requests load it once
        self._failed: dict[tuple[str, int], tuple[float, str]] = {}  # when a version's load failed, and why
        self._pet_view_lock = threading.Lock()
        self._pet_views: dict[str, object] = {}

    def pet_view(self, model: LoadedModel):
        """ImageNet's separate view of whether a photo shows a pet at all, for the versions that cannot answer
        from their own backbone: the version's imagenet_view.onnx, or (a version promoted before that file
        existed) the PyTorch view, shared by every task; loaded the first time one needs it."""
        path = model.folder / SEPARATE_VIEW_FILE
        key = str(path) if path.is_file() else "torch"
        with self._pet_view_lock:
            if key not in self._pet_views:
                self._pet_views[key] = separate_view(model.folder)
            return self._pet_views[key]

    def classify(self, model: LoadedModel, image, top_k: int, explain: bool = False,
                 explain_class: str | None = None) -> dict:
        """The served answer for one decoded photo: the model's top-k, whether it looks like a pet at all (from
        the model's own forward pass when its backbone is ImageNet's, else from the separate view), and with
        `explain` where the model looked."""
        return classify_many(model, [image], top_k, lambda: self.pet_view(model), explain, explain_class)[0]

    def classify_readable(self, model: LoadedModel, decoded: list, top_k: int, explain: bool = False,
                          explain_class: str | None = None) -> list:
        return classify_readable(model, decoded, top_k, lambda: self.pet_view(model), explain, explain_class)

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
                                   f"no production model in {shown_path(self.registry.root)}: train a run, then "
                                   "`python experiments/promote.py --task cats_vs_dogs`")
        if task not in served:
            known = set(self.registry.tasks())
            if task in known:
                raise ServingError(503, "no_production_model",
                                   f"{task} has no production version: `python experiments/promote.py --task {task}`"
                                   " (or --rollback VERSION)")
            raise ServingError(404, "unknown_task", f"unknown task {task!r}; served: {sorted(served) or 'none'}")
        return self._load((task, served[task]))

    def _load(self, key: tuple[str, int]) -> LoadedModel:
        """The loaded version, loading it on first use. Only requests for that version wait while it loads
        (about a second); a version that failed to load answers 503 at once and is retried after
        RETRY_FAILED_LOAD_S, instead of every request paying for another failed load."""
        loaded = self._loaded.get(key)
        if loaded is not None:
            return loaded
        with self._lock:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            if key in self._loaded:  # another request loaded it while this one waited
                return self._loaded[key]
            failed = self._failed.get(key)
            if failed and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
                raise ServingError(503, "model_unavailable", unavailable(key, failed[1]))
            start = time.perf_counter()
            try:
                # ONNX only: a registry's PyTorch exports run code when loaded. PETLAB_RUNTIME=torch (an operator's
                # comparison) predicts from the weights-only state dict instead; nothing falls back by itself.
                model = load_version(self.registry, *key, explain_fallback=torch_explain_if_installed,
                                     fallback=torch_weights_if_asked())
            except Exception as exc:  # noqa: BLE001 - said to the client as a 503; the trace goes to the log
                log.exception("could not load %s v%d", *key)
                self._failed[key] = (time.monotonic(), f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
                raise ServingError(503, "model_unavailable", unavailable(key, self._failed[key][1])) from None
            with self._lock:  # a promotion or rollback replaced the version: forget the task's others
                self._loaded = {k: m for k, m in self._loaded.items() if k[0] != key[0]} | {key: model}
                self._failed.pop(key, None)
            log.info("loaded %s v%d (%s) in %.2fs", *key, model.fmt, time.perf_counter() - start)
            return model

    def warm_up(self) -> None:
        """Load every production model (and the separate pet view, if one needs it) now, so the first request
        does not pay for it."""
        for task in self.production():
            try:
                model = self.model(task)
                if model.pet_module is None:
                    self.pet_view(model)
            except Exception as exc:  # noqa: BLE001 - a broken version must not stop the others being served
                log.error("could not load %s: %s", task, exc)

    def health(self) -> dict:
        served = self.production()
        models = {}
        for task, version in served.items():
            card = self.registry.card(task, version)
            loaded = self._loaded.get((task, version))
            failed = self._failed.get((task, version))
            shown = served_model(loaded)["format"] if loaded else "not served" if failed else "not loaded yet"
            models[task] = {"name": card["name"], "version": version, "arch": card["arch"],
                            "classes": len(card["classes"]), "format": shown,
                            "not_a_pet": not_a_pet_check(card, loaded),
                            # files of the version that were not loaded, and why (damaged, or would run code)
                            "refused": {name: without_paths(why) for name, why in loaded.refused.items()}
                            if loaded else {},
                            **({"not_served": without_paths(failed[1])} if failed and not loaded else {})}
        return {"status": "ok" if served else "no_production_model", "registry": shown_path(self.registry.root),
                "models": models}


def separate_view(folder: Path | None):
    """The separate view for a version: its SEPARATE_VIEW_FILE on ONNX Runtime, or (a run's model, or a version
    promoted before that file was written) the PyTorch view, importing torch then."""
    if folder is not None and (Path(folder) / SEPARATE_VIEW_FILE).is_file():
        return SeparateView(Path(folder) / SEPARATE_VIEW_FILE)
    from petlab.models.pet_view import PetView

    return PetView()


def torch_weights_if_asked():
    """load_weights_only where PETLAB_RUNTIME=torch asks for PyTorch, else None (without torch installed, the
    import fails and the version answers 503, saying so)."""
    if not torch_first():
        return None
    from petlab.registry.torch_fallback import load_weights_only

    return load_weights_only


def torch_explain_if_installed(registry, task: str, version: int):
    """The eager explainer of a version without a usable explain.onnx, where torch is installed; else None."""
    try:
        from petlab.registry.torch_fallback import load_eager_explain
    except ModuleNotFoundError:
        return None
    return load_eager_explain(registry, task, version)


def parse_explain(model: LoadedModel, explain, explain_class) -> tuple[bool, str | None]:
    """(explain, the class to explain or None for each photo's top-1) from a request's fields, or a 4xx."""
    flag = str(explain or "").strip().lower()
    if flag not in ("", "true", "false", "1", "0", "yes", "no"):
        raise ServingError(422, "bad_explain", f"explain must be true or false, got {explain!r}")
    wanted = flag in ("true", "1", "yes")
    label = str(explain_class).strip() if explain_class else None
    if label is not None:
        if not wanted:
            raise ServingError(422, "bad_explain", "explain_class is only read with explain=true")
        try:
            model.class_index(label)
        except ValueError as exc:
            raise ServingError(422, "unknown_class", str(exc)) from None
    if wanted and model.explainer() is None:
        raise ServingError(501, "explain_unavailable",
                           f"{model.name} v{model.version} ({model.card['arch']}) has no class-activation map here: "
                           "its head is not linear on its feature map, or it was promoted before explain.onnx and "
                           "PyTorch is not installed")
    return wanted, label


def classify_many(model: LoadedModel, images: list, top_k: int, pet_view: Callable, explain: bool = False,
                  explain_class: str | None = None) -> list[dict]:
    """ServedModels.classify for several decoded photos, in one forward pass of the model (and, for a version
    without its own pet view, one of `pet_view()`, called only then). With `explain`, each answer carries the
    PhotoHeatmap of `explain_class` (default: its top-1) from the same pass (inference/heatmap.py)."""
    answers = model.predict_many_with_pet(images, top_k, explain, explain_class)
    if any(answer[1] is None for answer in answers):
        separate = pet_view().pet_probability(images)
        judged = [verdict(float(p), SEPARATE_VIEW["threshold"]) for p in separate]
    else:
        judged = [verdict(answer[1], model.pet_threshold) for answer in answers]
    results = [{"task": model.task, "model": served_model(model), **j, "predictions": answer[0]}
               for answer, j in zip(answers, judged)]
    if explain:  # the PhotoHeatmap: the API writes it as JSON (with_heatmap_json), predict.py as a PNG
        for result, answer in zip(results, answers):
            result["heatmap"] = answer[2]
    return results


def with_heatmap_json(result: dict, image) -> dict:
    """A classify result as the API returns it: its heatmap (if any) as a grid and a PNG overlay of `image`."""
    return {**result, "heatmap": result["heatmap"].to_json(image)} if "heatmap" in result else result


def classify_readable(model: LoadedModel, decoded: list, top_k: int, pet_view: Callable, explain: bool = False,
                      explain_class: str | None = None) -> list:
    """classify_many over a batch where an exception stands in the place of each photo that could not be
    decoded: the readable ones in one pass, the answers back in the batch's order, None for the others."""
    readable = [d for d in decoded if not isinstance(d, Exception)]
    answers = iter(classify_many(model, readable, top_k, pet_view, explain, explain_class) if readable else [])
    return [None if isinstance(d, Exception) else next(answers) for d in decoded]


def served_model(model: LoadedModel) -> dict:
    """Which version answered, and from which file: with a pet view, that export gave the logits."""
    return {"name": model.name, "version": model.version,
            "format": model.pet_fmt if model.pet_module is not None else model.fmt}


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


def decode_photo(source):
    """Bytes or a file -> RGB image within the serving bounds above (formats, reduced size, pixels), or
    BadImageError. The server's uploads and predict.py's files are decoded by this one call."""
    return load_rgb(source, max_side=SERVING_MAX_SIDE, max_pixels=SERVING_MAX_PIXELS,
                    max_decoded_bytes=SERVING_MAX_DECODED_BYTES, formats=UPLOAD_FORMATS, admit=DECODE_BUDGET.reserve,
                    max_aspect=SERVING_MAX_ASPECT)


def decode_upload(data: bytes, filename: str | None = None):
    """Upload bytes -> RGB image, or a 4xx ServingError that says what is wrong with the file."""
    try:
        return decode_photo(data)
    except BadImageError as exc:
        what = {"empty": "the file is empty (zero bytes)",
                "not_an_image": f"the file is not an image in an accepted format ({', '.join(UPLOAD_FORMATS)})",
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
