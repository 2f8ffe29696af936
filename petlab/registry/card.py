"""Model cards: what a registered version is, what it expects as input, and where it came from."""

from __future__ import annotations

import json
from pathlib import PurePath


def preprocessing_steps(pre: dict) -> str:
    """The eval preprocessing in words; the demo and the exported graph's callers must do exactly this."""
    return (f"decode to RGB (EXIF rotation applied, first frame of an animation, transparency on white; "
            f"the server first decodes a JPEG with Pillow's Image.draft(None, (1024, 1024)) and shrinks an image "
            f"whose long side is still 2048 px or more by the integer factor long // 1024); resize with Pillow's "
            f"Image.resize ({pre['interpolation']}) so the short side is {pre['resize_size']} px and the long "
            f"side int({pre['resize_size']} * long / short); "
            f"centre-crop {pre['resize_size']}x{pre['resize_size']}, then centre-crop "
            f"{pre['image_size']}x{pre['image_size']}, each offset round((side - size) / 2) with Python's round; "
            f"float32 x / 255; normalise with mean {pre['mean']} and std {pre['std']}. Input: float32 NCHW "
            f"[N, 3, {pre['image_size']}, {pre['image_size']}]; output: logits [N, num_classes] (softmax for "
            f"probabilities). Preprocessing is outside the graph; models/README.md has it as code.")


def onnx_metadata(card: dict, task: str, file: str = "model.onnx") -> dict[str, str]:
    """What model.onnx (and pet_view.onnx, explain.onnx) carry about themselves, for programs without petlab: the
    class names in output order, the task, the preprocessing (as numbers and in words), and the temperature the
    server divides the logits by before the softmax."""
    pre = card["preprocessing"]
    explained = card.get("explain") or {}
    maps = (f"; outputs {', '.join(explained.get('outputs', []))}: class_maps [N, num_classes, h, w] is "
            f"{explained.get('class_maps', '')}; upsample it onto the eval crop" if file == "explain.onnx" else "")
    return {"petlab.task": task, "petlab.arch": card["arch"],
            "petlab.classes": json.dumps(card["classes"]),
            "petlab.preprocessing": json.dumps({k: pre[k] for k in ("image_size", "resize_size", "mean", "std",
                                                                     "interpolation")}),
            "petlab.preprocessing_steps": preprocessing_steps(pre),
            "petlab.temperature": repr(float((card.get("calibration") or {}).get("temperature", 1.0))),
            "petlab.tta": card.get("tta") or "none",  # "flip": average each photo's softmax with its mirror's
            "petlab.precision": "int8 (ONNX Runtime static quantisation, QDQ; card.json's int8 has its check)"
                                if file.endswith(".int8.onnx") else "fp32",
            "petlab.outputs": "logits [N, num_classes]; probabilities = softmax(log(p) / temperature) with p the "
                              "softmax of the logits (averaged with the mirror image's when petlab.tta is flip)" + maps}


def _name(path: str | None) -> str | None:
    """The last part of a path: cards written before paths were kept out still show no absolute path."""
    return PurePath(path).name if path else path


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def comparison_lines(c: dict | None) -> list[str]:
    if not c:
        return ["Promoted with no production version to compare against.", ""]
    head = f"## Compared with production v{c['production_version']}"
    if not c.get("comparable"):
        return [head, f"Not comparable: {c['reason']}." + (" Promoted with `--force`." if c.get("forced") else ""), ""]
    return [head,
            f"On the same {c['photos']} photos ({c['photos_from']}): accuracy {_pct(c['candidate_accuracy'])} vs "
            f"{_pct(c['production_accuracy'])} ({100 * c['difference']:+.2f} points); only this version right on "
            f"{c['candidate_only_right']}, only production on {c['production_only_right']}; {c['test']}: "
            f"p = {c['p_value']:.3g}."
            + (" **Not significantly better: promoted with `--force`.**" if c.get("forced") else ""), ""]


def calibration_lines(c: dict | None, figures: str = "") -> list[str]:
    if not c:
        return ["Not calibrated (no validation predictions): the server gives the raw probabilities.", ""]
    rows = [f"| {split} | {c[split]['ece_before']:.4f} | {c[split]['ece_after']:.4f} | "
            f"{c[split]['nll_before']:.4f} | {c[split]['nll_after']:.4f} |" for split in ("val", "test") if split in c]
    return ["## Calibration",
            f"Temperature **T = {c['temperature']:.3f}** ({c['method']}); the exports output raw logits and the "
            "server divides them by T, so its probabilities are the calibrated ones.", "",
            "| split | ECE before | ECE after | NLL before | NLL after |", "|---|---|---|---|---|", *rows, "",
            f"![reliability diagram]({figures}{c['figure']})", ""]


def not_a_pet_lines(check: dict | None) -> list[str]:
    if not check:  # a card from before the check existed: the server uses the separate view
        return []
    where = ("ImageNet's own head on this model's backbone, which is ImageNet's, untouched by training: the "
             f"same forward pass (`{check['file']}`), at {check['image_size']} px" if check["view"] == "own_backbone"
             else f"a separate ImageNet {check['arch']} at {check['image_size']} px: one more forward pass per photo")
    return ["## Not a pet?",
            f"A photo is answered as not recognised when the ImageNet probability that it shows a dog or a cat is "
            f"below **{check['threshold']}**; the score comes from {where}.", ""]


def answering_files(card: dict, folder) -> dict:
    """The card's "answers": the exact file each part of a served answer comes from (`logits`, `pet_probability`,
    and `mirror` for a flip-averaged card), as the server loads them (inference/model.py load_version): where
    int8 serves, its twins, with what answers instead where int8 may not (`fp32`); and `explain`. `folder` is
    the version's folder, for the files that may be absent (the separate view, explain.onnx)."""
    from pathlib import Path

    from petlab.inference.model import EXPLAIN_ONNX, MODEL_ONNX, PET_VIEW_ONNX, int8_file
    from petlab.inference.pet import SEPARATE_VIEW_FILE

    view = card.get("not_a_pet") or {}
    own = bool(view.get("file") and view.get("onnx"))
    separate = SEPARATE_VIEW_FILE if (Path(folder) / SEPARATE_VIEW_FILE).is_file() else "PyTorch ImageNet view"

    def files(int8: bool) -> dict:
        twin = int8_file if int8 else (lambda name: name)
        logits = twin(PET_VIEW_ONNX if own else MODEL_ONNX)
        entry = {"logits": logits, "pet_probability": logits if own else separate}
        if card.get("tta") == "flip":  # each photo's softmax averaged with its mirror image's, through model.onnx
            entry["mirror"] = twin(MODEL_ONNX)
        return entry

    int8 = bool((card.get("int8") or {}).get("served"))
    answers = {"served": files(int8)}
    if int8:
        answers["fp32"] = files(False)
        answers["fp32_when"] = ("a CPU whose int8 kernels differ from those the int8 check ran on (card's "
                                "int8.checked_on), or PETLAB_RUNTIME=onnxruntime_fp32")
    if (Path(folder) / EXPLAIN_ONNX).is_file():
        answers["explain"] = EXPLAIN_ONNX
    return answers


def answers_lines(card: dict) -> list[str]:
    answers = card.get("answers")
    if not answers:
        return []
    served = answers["served"]
    parts = [f"the logits from `{served['logits']}`", f"\"is it a pet?\" from `{served['pet_probability']}`"]
    if served.get("mirror"):
        parts.append(f"the mirror image's logits from `{served['mirror']}`")
    lines = ["What answers: " + ", ".join(parts) + "."]
    if answers.get("fp32"):
        fp32 = answers["fp32"]
        lines.append(f"On {answers['fp32_when']}: `{fp32['logits']}`" +
                     (f" and `{fp32['mirror']}`" if fp32.get("mirror") else "") + " instead.")
    return [" ".join(lines), ""]


def serving_lines(card: dict) -> list[str]:
    """Which files answer, and how each was checked against the eager model."""
    serving, checks = card.get("serving"), card.get("verification") or {}
    if not serving:
        return []
    lines = [*answers_lines(card), "The server loads ONNX files only: ONNX Runtime measured several times faster "
             "than PyTorch on CPUs, and the PyTorch exports run code when loaded.", ""]
    onnx = checks.get("onnx")
    if onnx:
        worst = max(onnx["max_abs_diff"].values())
        lines += [f"`{onnx['file']}` on {onnx['runtime']}: logits within rtol/atol {onnx['tolerance']['rtol']:g} "
                  f"of the eager model's (largest difference {worst:.1e}), same top-1 on every verification photo.",
                  ""]
    return lines


def int8_lines(check: dict | None) -> list[str]:
    """The int8 twin's check (promote.py --int8): its figures, and whether it serves."""
    if not check:
        return []
    c, t = check["calibration"], check["thresholds"]
    test = "" if check.get("test_accuracy_fp32") is None else (
        f"; test accuracy {_pct(check['test_accuracy_int8'])} against fp32's {_pct(check['test_accuracy_fp32'])} "
        f"({check['test_accuracy_difference_points']:+.2f} points)")
    pet = "" if check.get("val_pet_verdict_agreement") is None else (
        f"; the \"not a pet\" verdict agrees on {_pct(check['val_pet_verdict_agreement'])}")
    files = ", ".join(f"`{f}`" for f in check["files"]) or "The int8 twins (not kept)"
    photos = check.get("checked_photos") or "validation photos"
    return ["## int8",
            f"{files}: {c['recipe']}, calibrated ({c['method']}) on {c['photos']} of {c['from']}. Top-1 agreement "
            f"with fp32 on {check['val_photos']} {photos} **{_pct(check['val_top1_agreement'])}**{test}{pet}. "
            f"Served only with at least {100 * t['agreement_min']:.1f}% agreement and test accuracy within "
            f"{t['test_accuracy_within_points']:.1f} points: **{'served' if check['served'] else 'not served'}** "
            f"({check['why']}).{checked_on(check.get('checked_on'))}", ""]


def checked_on(where: dict | None) -> str:
    if not where:
        return ""
    return (f" Checked on {where['cpu']} ({where['int8_kernels']}); a server on a CPU with other int8 kernels "
            f"answers with the fp32 files, since the check's figures hold for these kernels only.")


def latency_lines(latency: dict | None) -> list[str]:
    """The source run's served latency, the CPU it holds for, and the budget it was chosen under."""
    if not latency:
        return []
    budget = f"; chosen as the most accurate run within **{latency['budget_ms']:g} ms**" \
        if latency.get("budget_ms") is not None else ""
    return ["## Latency",
            f"Answering one photo at batch 1 ({latency['runtime']}, preprocessing included"
            f"{', the not-a-pet check ' + latency['not_a_pet'] if latency.get('not_a_pet') else ''}): p50 "
            f"**{latency['p50_ms']:.1f} ms**, p95 {latency['p95_ms']:.1f} ms over {latency['calls']} calls on "
            f"{latency['cpu']}, {latency['threads']} threads{budget}.", ""]


def leak_lines(count) -> list[str]:
    """What the card says about test photos with a near-copy in train (None: not checked; "absent": a card from
    before the check)."""
    if count == "absent":
        return []
    if count is None:
        return ["Test photos with a near-copy in train: **not checked** (the run had `data.leak_check` off).", ""]
    if count == 0:
        return ["Test photos with a near-copy in train: **0** (petlab/data/near_copies.py).", ""]
    return [f"**Warning: {count} test photos have a near-copy in train**, so the test accuracy counts photos the "
            "model has seen; `experiments/audit.py` lists them and `--exclude` trains without them.", ""]


def card_markdown(card: dict, figures: str = "") -> str:
    """The card as Markdown; its figures are linked as `figures` + file name (beside card.md by default; the
    demo passes the route that serves them)."""
    metrics = card.get("metrics", {})
    val, test = metrics.get("val", {}), metrics.get("test", {})
    comet = card.get("comet") or {}
    git = card.get("git") or {}
    sel = card["selected_by"]
    lines = [
        f"# {card['name']} v{card['version']} ({card['status']})",
        "",
        f"**{card['arch']}** for `{card['task']}`: {len(card['classes'])} classes "
        f"({', '.join(card['classes'][:12])}{', …' if len(card['classes']) > 12 else ''}).",
        "",
        "| split | accuracy | top-5 | balanced accuracy | loss | images |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {_pct(m.get('accuracy'))} | {_pct(m.get('top5_accuracy'))} | "
          f"{_pct(m.get('balanced_accuracy'))} | {m.get('loss', float('nan')):.4f} | {m.get('n', '')} |"
          for name, m in (("validation", val), ("test", test))),
        "",
        *([f"Validation: {val['source']}.", ""] if val.get("source") else []),
        *leak_lines(card.get("test_near_copies_in_train", "absent")),
        *(["Predictions average the photo and its mirror image (test-time augmentation), as in evaluation.", ""]
          if card.get("tta") == "flip" else []),
        f"Selected by **{sel['metric']} = {sel['value']:.4f}** among {sel['candidates']} candidate run(s); "
        "the test split was never used to choose.",
        "",
        *comparison_lines(card.get("compared_with")),
        *calibration_lines(card.get("calibration"), figures),
        *not_a_pet_lines(card.get("not_a_pet")),
        *int8_lines(card.get("int8")),
        *latency_lines(card.get("latency")),
        "## Input",
        preprocessing_steps(card["preprocessing"]),
        "",
        "## Files",
        *(f"- `{name}`: {what}" for name, what in card["files"].items()),
        "",
        *serving_lines(card),
        "## Provenance",
        f"- dataset: {card.get('dataset')} ({_name(card.get('dataset_root'))})",
        f"- source run: `{_name(card['source_run'])}`",
        f"- Comet: {comet.get('url') or comet.get('key') or 'not tracked'} ({comet.get('registration', 'n/a')})",
        f"- git: {git.get('commit', 'unknown')}{' (dirty)' if git.get('dirty') else ''}",
        f"- created: {card['created_at']}",
        "",
    ]
    return "\n".join(lines)


HF_CARD = "README.md"  # the model card in Hugging Face's format, beside card.md
# license: other needs a name and a link (the Hub's card spec): the card's own License section says what it is
LICENSE_NAME, LICENSE_LINK = "pretrained-weights-and-dataset-terms", "README.md#license"


def dataset_name(card: dict) -> str | None:
    """The dataset as the Hub should show it: a named layout, or for a folder of photos ("imagefolder") the
    folder's name (oxford-pets-37breeds-5shot), which says which photos."""
    if card.get("dataset") == "imagefolder" and card.get("dataset_root"):
        return card["dataset_root"]
    return card.get("dataset")


def hugging_face_card(card: dict) -> str:
    """card.md with Hugging Face's YAML front matter (built by huggingface_hub's own ModelCardData): license,
    tags, dataset, and a model-index with the validation and test metrics, so the Hub (and
    `huggingface_hub.ModelCard.load`) reads what the version scored. Its figure links are relative: the
    files sit beside it, in the registry and in the Space."""
    from huggingface_hub import EvalResult, ModelCardData

    metrics = card.get("metrics", {})
    dataset = dataset_name(card)
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=dataset or "unknown", dataset_name=dataset or "unknown",
                          dataset_split=split, metric_type=key, metric_value=float(value),
                          metric_name=f"{label} {key.replace('_', ' ')}")
               for split, label in (("test", "Test"), ("val", "Validation"))
               for key, value in (metrics.get(split) or {}).items() if key in ("accuracy", "balanced_accuracy")]
    data = ModelCardData(
        model_name=f"{card['name']} v{card['version']}", license="other", license_name=LICENSE_NAME,
        license_link=LICENSE_LINK, library_name="onnx",
        pipeline_tag="image-classification", datasets=[dataset] if dataset else None,
        tags=["image-classification", "pets", "onnx", "petlab", card["arch"].replace("_", "-"), card["task"]],
        eval_results=results or None)
    licence = ("## License\n\nOther (`license_name: " + LICENSE_NAME + "`): the weights start from "
               "ImageNet-pretrained backbones and were trained on public pet photos, each under its publisher's "
               "terms; check them before reuse.")
    return f"---\n{data.to_yaml()}\n---\n\n{card_markdown(card)}\n{licence}\n"
