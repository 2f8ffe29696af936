"""petlab demo: the registry's production models behind a Gradio page and a JSON API, one server.

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--registry DIR] [--max-upload-mb 10] [--upload-ttl-s 3600]
                       [--upload-cache-mb 256] [--upload-cache-files 512]

- /              the Gradio page: upload, paste or drag a photo -> top-5 classes
- POST /api/predict   multipart: file, optional task and top_k -> JSON predictions; `file` may repeat
                      (up to MAX_FILES_PER_REQUEST photos, the whole body within --max-upload-mb) -> one
                      result per file, in order, under "results"; explain=true adds each photo's "heatmap"
                      (where the model looked, for explain_class or its top-1: a grid over the photo's own
                      frame and a PNG overlay)
- GET  /api/health    status and the versions served
- the Gradio client API (api_name "/classify")
It listens on 127.0.0.1 unless told otherwise (no share link, ever), needs no network, and only
reads the registry. On a Hugging Face Space, GRADIO_SERVER_NAME/PORT set the address.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

from petlab.public_server import (  # noqa: E402
    AllowedRoutes,
    BodyLimit,
    BodyTooLarge,
    QueueGuard,
    UploadBudget,
    filename_problem,
    inside,
    log_request,
    mark_launched,
    uploaded_photo,
)
from petlab.registry import Registry  # noqa: E402
from petlab.registry.card import card_markdown  # noqa: E402
from petlab.serving import (  # noqa: E402
    ServedModels,
    ServingError,
    decode_upload,
    parse_explain,
    parse_top_k,
    return_freed_memory_promptly,
    served_model,
    with_heatmap_json,
)

log = logging.getLogger("petlab.demo")
MULTIPART_OVERHEAD = 64 * 1024  # form fields and boundaries: a body may be this much over the file limit
# Photos one /api/predict request may carry (one forward pass for all of them); the body limit holds for
# the request as a whole, so 16 photos share --max-upload-mb.
MAX_FILES_PER_REQUEST = 16
UPLOAD_TTL_S = 3600  # Gradio's copies of page uploads are deleted once this old (checked every UPLOAD_TTL_S / 6)
UPLOAD_CACHE_MB, UPLOAD_CACHE_FILES = 256, 512  # and the folder holds at most this much (oldest evicted first)
QUEUE_MAX_SIZE = 64  # events waiting in the page's queue, all clients together
QUEUE_PER_CLIENT = 4  # events one client (address) may have waiting or running
QUEUE_CONCURRENCY = 8  # page events of one kind running at once (Gradio's default is 1)


def classify(models: ServedModels, data: bytes, filename: str | None, task: str | None, top_k: int,
             explain=None, explain_class=None) -> dict:
    """The one prediction path the API and the page share (runs in a worker thread)."""
    model = models.model(task)  # an unknown task or no production model is the answer before decoding
    explain, explain_class = parse_explain(model, explain, explain_class)
    image = decode_upload(data, filename)
    return with_heatmap_json(models.classify(model, image, top_k, explain, explain_class), image)


def classify_files(models: ServedModels, files: list[tuple[bytes, str | None]], task: str | None, top_k: int,
                   explain=None, explain_class=None) -> dict:
    """Several uploads in one request: each decoded on its own (an unreadable one gets its error in its place),
    the readable ones predicted in one forward pass. Results keep the order of the files."""
    model = models.model(task)
    explain, explain_class = parse_explain(model, explain, explain_class)
    decoded: list = []
    for data, filename in files:
        try:
            decoded.append(decode_upload(data, filename))
        except ServingError as err:
            decoded.append(err)
    results = []
    for (_, filename), d, answer in zip(files, decoded, models.classify_readable(model, decoded, top_k, explain,
                                                                                       explain_class)):
        if answer is None:
            results.append({"file": filename, "error": d.code, "message": d.message})
        else:
            answer = with_heatmap_json(answer, d)
            results.append({"file": filename, **{k: v for k, v in answer.items() if k not in ("task", "model")}})
    return {"task": model.task, "model": served_model(model), "results": results}


def default_task(tasks: list[str]) -> str | None:
    """The page's task until a person picks another: cats vs dogs where it is served (petlab's first task),
    else the first served; None while nothing is."""
    return "cats_vs_dogs" if "cats_vs_dogs" in tasks else (sorted(tasks) or [None])[0]


def create_api(models: ServedModels, max_upload_bytes: int) -> FastAPI:
    app = FastAPI(title="petlab", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)

    def too_large(size: int) -> ServingError:
        return ServingError(413, "too_large", f"upload of {size} bytes is over the {max_upload_bytes} byte limit")

    @app.get("/api/health")
    def health():
        return models.health()

    @app.get("/api/figures/{task}/{name}")
    def figure(task: str, name: str):
        """The figures the production version's card shows (its reliability diagram), and nothing else."""
        served = models.production()
        card = models.registry.card(task, served[task]) if task in served else {}
        if name != (card.get("calibration") or {}).get("figure"):
            return JSONResponse({"error": "not_found", "message": f"no figure {name!r} for {task!r}"},
                                status_code=404)
        return FileResponse(models.registry.version_dir(task, served[task]) / name, media_type="image/png")

    @app.post("/api/predict")
    async def predict(request: Request):
        start = time.perf_counter()
        record = {"route": "/api/predict", "task": None, "version": None}
        try:
            try:  # BodyLimit (around the whole app) has refused an oversized body before or while it streams
                form = await request.form(max_files=MAX_FILES_PER_REQUEST, max_fields=8)
            except BodyTooLarge:
                raise
            except Exception as exc:  # noqa: BLE001 - malformed multipart bodies
                if "Too many files" in str(exc):
                    raise ServingError(413, "too_many_files", f"at most {MAX_FILES_PER_REQUEST} files per request; "
                                                              "send the others in further requests") from None
                raise ServingError(400, "bad_form", f"could not parse the form: {exc}") from None
            uploads = form.getlist("file")
            if any(isinstance(u, str) for u in uploads):
                raise ServingError(400, "bad_filename", "form field 'file' arrived as text, without a file name: "
                                                        "send the photo as a file part with a name "
                                                        "(curl -F file=@photo.jpg)")
            if not uploads:
                raise ServingError(400, "missing_file", "missing form field 'file': POST multipart/form-data "
                                                        "with the photo in a field named file (repeat it for "
                                                        f"up to {MAX_FILES_PER_REQUEST} photos)")
            for upload in uploads:
                problem = filename_problem((upload.filename or "").encode())
                if problem:
                    raise ServingError(400, "bad_filename", problem)
            task = form.get("task") or None
            record["task"] = task
            top_k = parse_top_k(form.get("top_k"))
            explain = (form.get("explain"), form.get("explain_class"))
            files = [(await upload.read(), upload.filename) for upload in uploads]
            if any(len(data) > max_upload_bytes for data, _ in files):
                raise too_large(max(len(data) for data, _ in files))
            if len(files) > 1:
                result = await run_in_threadpool(classify_files, models, files, task, top_k, *explain)
                result["latency_ms"] = round(1000 * (time.perf_counter() - start), 2)
                log_request(route="/api/predict", task=result["task"], version=result["model"]["version"],
                            status=200, outcome="ok", files=len(files), latency_ms=result["latency_ms"],
                            unreadable=sum(1 for r in result["results"] if "error" in r))
                return result
            result = await run_in_threadpool(classify, models, *files[0], task, top_k, *explain)
        except ServingError as err:
            log_request(**record, status=err.status, outcome=err.code,
                        latency_ms=round(1000 * (time.perf_counter() - start), 2))
            return JSONResponse({"error": err.code, "message": err.message}, status_code=err.status)
        except BodyTooLarge:
            raise  # BodyLimit has answered 413 and logged it
        except Exception:  # noqa: BLE001 - the trace goes to the log, never to the client
            log.exception("predict failed")
            log_request(**record, status=500, outcome="internal_error")
            return JSONResponse({"error": "internal_error", "message": "internal error; see the server log"},
                                status_code=500)
        result["latency_ms"] = round(1000 * (time.perf_counter() - start), 2)
        log_request(route="/api/predict", task=result["task"], version=result["model"]["version"], status=200,
                    outcome="ok", latency_ms=result["latency_ms"], top=result["predictions"][0]["label"],
                    recognised=result["recognised"])
        return result

    return app


def build_page(models: ServedModels, upload_ttl_s: int = UPLOAD_TTL_S) -> gr.Blocks:
    served = models.production()
    tasks = sorted(served)
    examples = [[str(p), task] for task in tasks
                for p in sorted((models.registry.version_dir(task, served[task]) / "examples").glob("*"))]
    if len(tasks) == 1:  # no task column when there is nothing to choose
        examples = [row[:1] for row in examples]

    def current_card(task: str | None) -> tuple[str, str]:
        """(one-line summary, full card) of the version served for `task`."""
        served_now = models.production()
        if task not in served_now:
            missing = ("**No production model yet.** Train a run, then "
                       "`python experiments/promote.py --task cats_vs_dogs`.")
            return missing, missing
        card = models.registry.card(task, served_now[task])
        metrics = card["metrics"]
        summary = (f"Serving **{card['name']} v{card['version']}** ({card['arch']}, "
                   f"validation {100 * metrics['val']['accuracy']:.2f}%"
                   + (f", test {100 * metrics['test']['accuracy']:.2f}%" if "test" in metrics else "") + ")")
        return summary, card_markdown(card, figures=f"/api/figures/{task}/")

    def on_load():
        served_now = sorted(models.production())
        value = default_task(served_now)
        return gr.Dropdown(choices=served_now, value=value, visible=len(served_now) > 1), *current_card(value)

    def on_image(path: str | None, task: str | None):
        if path is None:
            return None, ""
        start = time.perf_counter()
        try:
            result = classify(models, Path(path).read_bytes(), Path(path).name, task or None, 5)
        except ServingError as err:
            log_request(route="page", task=task, status=err.status, outcome=err.code)
            raise gr.Error(err.message) from None
        log_request(route="page", task=result["task"], version=result["model"]["version"], status=200,
                    outcome="ok", recognised=result["recognised"],
                    latency_ms=round(1000 * (time.perf_counter() - start), 2))
        verdict = (f"**Recognised as a pet** (ImageNet's view: {result['pet_probability']:.0%} a cat or dog)."
                   if result["recognised"] else f"**Not recognised:** {result['reason']}.")
        verdict += f" Task `{result['task']}`, {result['model']['name']} v{result['model']['version']}."
        return {p["label"]: p["probability"] for p in result["predictions"]}, verdict

    def on_heatmap(path: str | None, task: str | None, show: bool):
        """Where the model looked, beside the prediction: its own request, so the label never waits for it."""
        if path is None or not show:
            return gr.Image(value=None, visible=bool(show))
        try:
            model = models.model(task or None)
            parse_explain(model, True, None)
            image = decode_upload(Path(path).read_bytes(), Path(path).name)
            heat = model.predict_many_with_pet([image], 1, explain=True)[0][2]
        except ServingError as err:
            log_request(route="page/heatmap", task=task, status=err.status, outcome=err.code)
            return gr.Image(value=None, visible=True, label=f"No heatmap: {err.message}")
        return gr.Image(value=heat.overlay(image), visible=True, label=f"Where the model looked for {heat.label!r}")

    # delete_cache: Gradio keeps a copy of every page upload; without it /gradio_api/upload fills the disk.
    with gr.Blocks(title="petlab demo", delete_cache=(max(1, upload_ttl_s // 6), upload_ttl_s)) as page:
        gr.Markdown("# petlab\nUpload, paste or drag a pet photo: the production model names the class.")
        # the default is explicit (gradio_client's view_api() shows it), and each answer names its task
        task = gr.Dropdown(choices=tasks, value=default_task(tasks), label=f"Task (default {default_task(tasks)})",
                           visible=len(tasks) > 1, interactive=True)
        with gr.Row():
            # filepath + image_mode=None: the untouched upload reaches petlab's own decoding.
            # only a file from Gradio's upload route, unopened: petlab's bounded decoder reads it
            image = uploaded_photo(sources=["upload", "clipboard"], label="Photo", elem_id="photo")
            with gr.Column():
                label = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction")
                recognition = gr.Markdown("", label="verdict", elem_id="recognition")  # named in view_api()
                summary_text, card_text = current_card(default_task(tasks))
                summary = gr.Markdown(summary_text, elem_id="served")
            with gr.Column():
                show = gr.Checkbox(value=True, label="Show where the model looked (class-activation map)",
                                   elem_id="explain")
                heatmap = gr.Image(type="pil", label="Where the model looked", interactive=False, elem_id="heatmap",
                                   format="png")
        if examples:
            gr.Examples(examples=examples, inputs=[image, task] if len(tasks) > 1 else [image],
                        label="Examples (validation photos)", cache_examples=False)
        with gr.Accordion("Model card", open=False):
            card = gr.Markdown(card_text, elem_id="card")
        image.change(on_image, [image, task], [label, recognition], api_name="classify").then(
            on_heatmap, [image, task, show], heatmap, api_name=False)
        task.change(current_card, task, [summary, card], api_name=False).then(
            on_image, [image, task], [label, recognition], api_name=False).then(
            on_heatmap, [image, task, show], heatmap, api_name=False)
        show.change(on_heatmap, [image, task, show], heatmap, api_name=False)
        page.load(on_load, None, [task, summary, card], api_name=False)
    return page


def create_app(registry_dir: str | os.PathLike | None = None, max_upload_mb: float = 10.0,
               upload_ttl_s: int = UPLOAD_TTL_S, upload_cache_mb: float = UPLOAD_CACHE_MB,
               upload_cache_files: int = UPLOAD_CACHE_FILES) -> FastAPI:
    return_freed_memory_promptly()
    registry = Registry(registry_dir)
    models = ServedModels(registry)
    models.warm_up()
    max_bytes = int(max_upload_mb * 1024 * 1024)
    app = create_api(models, max_bytes)
    # The page may serve the example photos and nothing else of the registry (weights, exports, cards).
    examples = [str((registry.version_dir(task, version) / "examples").resolve())
                for task, version in models.production().items()]
    page = build_page(models, upload_ttl_s)
    # Gradio's queue holds at most QUEUE_MAX_SIZE waiting events (a join past it: 503); QueueGuard bounds the rest.
    # Several page events run at once, so an ordinary photo never waits in Gradio's line behind a costly one: the
    # decode budget (serving.DecodeBudget) is what runs costly decodes one at a time, as it does for the API.
    page.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=QUEUE_CONCURRENCY)
    app = gr.mount_gradio_app(app, page, path="/", allowed_paths=examples, max_file_size=max_bytes,
                              footer_links=["api"])
    mark_launched(page)  # Gradio checks every file an input names, as after launch() (petlab/public_server.py)

    def photo_folders() -> list[str]:
        return [get_upload_folder(), *examples]

    # Around the API and Gradio alike, outermost last: only the listed routes, bounded bodies, a bounded queue
    # and a bounded upload folder (petlab/public_server.py).
    app.add_middleware(UploadBudget, max_bytes=int(upload_cache_mb * 2**20), max_files=upload_cache_files)
    app.add_middleware(QueueGuard, blocks=page, photo_ok=lambda path: inside(path, photo_folders()),
                       per_client=QUEUE_PER_CLIENT)
    app.add_middleware(BodyLimit, max_bytes=max_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(AllowedRoutes, folders=photo_folders)
    return app


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--registry", help="registry folder (default $PETLAB_REGISTRY_DIR or models/registry)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    parser.add_argument("--upload-ttl-s", type=int, default=UPLOAD_TTL_S,
                        help="delete Gradio's copies of page uploads once this many seconds old")
    parser.add_argument("--upload-cache-mb", type=float, default=UPLOAD_CACHE_MB,
                        help="at most this much in Gradio's upload folder (the oldest uploads are evicted)")
    parser.add_argument("--upload-cache-files", type=int, default=UPLOAD_CACHE_FILES,
                        help="at most this many files in Gradio's upload folder (likewise)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.registry, args.max_upload_mb, args.upload_ttl_s, args.upload_cache_mb,
                     args.upload_cache_files)
    log.info("serving on http://%s:%d (registry %s)", args.host, args.port, Registry(args.registry).root)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
