"""Assemble a Hugging Face Space: the demo, the petlab package and the production models' ONNX exports.

    python demo/build_space.py [--out build/space] [--registry DIR]

The folder it writes is a complete Space (sdk: gradio, app_file: app.py, python_version pinned) that installs
no torch: it serves model.onnx on ONNX Runtime (petlab/inference). Push it with git:
    cd build/space && git init && git lfs track "*.onnx" && git add . && git commit -m "petlab demo"
    git push --force https://huggingface.co/spaces/<user>/<space> HEAD:main
On the Space, GRADIO_SERVER_NAME=0.0.0.0 makes app.py listen publicly; locally it stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from petlab.data.images import load_rgb
from petlab.fileio import atomic_write
from petlab.inference.pet import SEPARATE_VIEW_FILE
from petlab.registry import Registry
from petlab.registry.store import write_card

DEMO = Path(__file__).resolve().parent
REPO = DEMO.parent
MARKER = ".petlab-space"
# What the Space serves from, on ONNX Runtime (explain.onnx: the heatmaps), and the figure its card shows
# (/api/figures/). The card itself (card.json, card.md, README.md) is written again, listing only these files.
# The int8 twins go where promotion wrote them (their check passed); the Space's server answers with them only
# on a CPU with the int8 kernels the check ran on (inference/model.py). The PyTorch exports and the state dict stay
# home: without torch they could not load.
SPACE_FILES = ("model.onnx", "pet_view.onnx", "model.int8.onnx", "pet_view.int8.onnx", "explain.onnx",
               SEPARATE_VIEW_FILE, "reliability.png")
PYTHON_VERSION = "3.11"  # what petlab needs (datetime.UTC) and the Space's requirements were tested with

FRONT_MATTER = """---
title: petlab pet classifier
emoji: 🐾
colorFrom: indigo
colorTo: yellow
sdk: gradio
sdk_version: {gradio}
python_version: "{python}"
app_file: app.py
pinned: false
---

# petlab demo

Upload a pet photo; the production model of each task names the class. JSON API: `POST /api/predict`
(multipart `file`, optional `task`, `top_k`), `GET /api/health`. Built by `demo/build_space.py`
from the petlab repository; the models and their cards are in `models/registry/`.

{models}
"""


def build_space(out: Path, registry: Registry) -> list[str]:
    """Write the Space into `out` (replacing an earlier build); returns the tasks it serves."""
    served = {task: registry.production(task) for task in registry.tasks()}
    served = {task: entry for task, entry in served.items() if entry}
    if not served:
        raise SystemExit(f"error: no production model in {registry.root}; run experiments/promote.py first")
    if out.exists():
        if not (out / MARKER).is_file():
            raise SystemExit(f"error: {out} exists and is not an earlier Space build; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("built by demo/build_space.py\n")
    shutil.copy(DEMO / "app.py", out / "app.py")
    shutil.copy(DEMO / "requirements.txt", out / "requirements.txt")
    shutil.copytree(REPO / "petlab", out / "petlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    lines = []
    for task, entry in served.items():
        version = entry["version"]
        source = registry.version_dir(task, version)
        target = out / "models" / "registry" / task / f"v{version}"
        target.mkdir(parents=True)
        for name in SPACE_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, target / name)
        if (source / "examples").is_dir():
            shutil.copytree(source / "examples", target / "examples")
        card = registry.card(task, version)
        if not (target / "model.onnx").is_file():
            raise SystemExit(f"error: {task} v{version} has no model.onnx, which the Space serves from; promote "
                             "it again with this petlab")
        own_view = (card.get("not_a_pet") or {}).get("view") == "own_backbone" and (target / "pet_view.onnx").is_file()
        if not own_view and not (target / SEPARATE_VIEW_FILE).is_file():  # promoted before that file was written
            from petlab.models.pet_view import export_separate_view

            export_separate_view([load_rgb(p) for p in sorted((target / "examples").iterdir())[:8]],
                                 target / SEPARATE_VIEW_FILE)
        shipped = {p.name for p in target.iterdir()} | {"examples/"}
        card = {**card, "files": {name: what for name, what in card.get("files", {}).items() if name in shipped}}
        write_card(target, card)
        index = {**registry.index(task), "versions": [entry]}  # only what the Space serves
        atomic_write(target.parent / "index.json", json.dumps(index, indent=2) + "\n")
        lines.append(f"- `{task}`: {card['name']} v{version} ({card['arch']}, validation "
                     f"{100 * card['metrics']['val']['accuracy']:.2f}%)")
    gradio = next(line.split("==")[1] for line in (DEMO / "requirements.txt").read_text().splitlines()
                  if line.startswith("gradio=="))
    (out / "README.md").write_text(FRONT_MATTER.format(gradio=gradio, python=PYTHON_VERSION, models="\n".join(lines)))
    return sorted(served)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/space"))
    parser.add_argument("--registry", help="default $PETLAB_REGISTRY_DIR or models/registry")
    args = parser.parse_args(argv)
    tasks = build_space(args.out, Registry(args.registry))
    print(f"Space written to {args.out} (serving {', '.join(tasks)}); see this script's help to push it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
