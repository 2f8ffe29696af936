"""Do petlab's heatmaps point at the pet? The pointing game on Oxford-IIIT Pet's official pixel masks, a sanity
check with the head randomised, Grad-CAM (Captum) against the exact map, and what explain=true costs.

    python benchmarks/heatmaps.py [--cats-run RUN_DIR] [--breeds-run RUN_DIR] [--requests 100] [--json]

Two models, as a user gets them: the served cats-vs-dogs model (`lite0_features_cats_vs_dogs`, what `make run`
promotes: a linear head on frozen Lite0 features, promoted here into a scratch registry and served from its
explain.onnx) and a 3-breed model trained on oxford-iiit-pet-3breeds' own trainval (`breeds_features`: Lite2).
Each is trained unless given. On the Oxford test photos that have a trimap (1 pet, 2 background, 3 border):
- peak hit rate: the share of photos whose heatmap peak (in the photo's own frame) falls on the pet or its border;
- mass ratio: the share of the heatmap's mass on the pet, over the pet's share of the photo (1: no better
  than spreading it evenly);
- the same for a centre baseline: the photo's centre as the peak, and a centred Gaussian (sigma a quarter of
  each side) as the mass.
Sanity check (Adebayo et al., 2018): the head's weights re-drawn at their initialisation; the Spearman rank
correlation of each photo's map (the trained model's top-1 class) with the trained model's, on the map grid.
Cost: the demo's /api/predict p50 with and without explain=true over --requests photos (server latency and
client), and predict.py's photos/s with and without --explain. Writes reports/heatmaps/: results.json and
pointing_game.png (12 photos: overlay, with the pet's mask outlined).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from common import REPO, benchmark_report_dir, demo_process, shared_data  # benchmarks/common.py (this script's folder)
from PIL import Image
from scipy.ndimage import distance_transform_edt
from scipy.stats import spearmanr

from petlab import rundir
from petlab.batch_predict import find_photos, open_model, predict_photos
from petlab.engine.speed import machine
from petlab.inference.heatmap import crop_box
from petlab.models.cam import ClassMaps, head_linear, heatmaps
from petlab.registry import Registry
from petlab.serving import decode_photo

OXFORD = "oxford-iiit-pet-3breeds"
PET, BORDER = 1, 3  # trimap values (2 is background)
FIGURE_PHOTOS = 12


def train(config: str, data: Path, out: Path) -> Path:
    command = [sys.executable, str(REPO / "experiments" / "run.py"), "--config",
               str(REPO / "experiments" / "configs" / f"{config}.yaml"), "--data-dir", str(data), "--output-dir",
               str(out)]
    print(f"training {config} on {data.name}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=REPO, stdout=sys.stderr)
    (run,) = out.iterdir()
    return run


def oxford_test_photos(root: Path) -> list[tuple[Path, Path]]:
    """(photo, trimap) for each photo of the official test list that has a trimap."""
    names = [line.split()[0] for line in (root / "annotations" / "test.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pairs = [(root / "images" / f"{n}.jpg", root / "annotations" / "trimaps" / f"{n}.png") for n in names]
    return [(p, t) for p, t in pairs if p.is_file() and t.is_file()]


def pet_mask(trimap: Path, size: tuple[int, int]) -> np.ndarray:
    """The pet (and its border) as a boolean [H, W] in the photo's frame."""
    values = np.asarray(Image.open(trimap).resize(size, Image.Resampling.NEAREST))
    return (values == PET) | (values == BORDER)


def centre_gaussian(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.exp(-(((x - (width - 1) / 2) / (width / 4)) ** 2 + ((y - (height - 1) / 2) / (height / 4)) ** 2) / 2)


def pointing(frames: list[np.ndarray], masks: list[np.ndarray], cells: list[float]) -> dict:
    """The pointing game. `cells`: each photo's map cell (stride 32 of the crop) in the photo's pixels; a peak
    within half a cell of the pet also counts as "near" (the map cannot place its peak more finely)."""
    hits, near, ratios, base_hits, base_near, base_ratios = [], [], [], [], [], []
    for heat, mask, cell in zip(frames, masks, cells):
        share = mask.mean()
        distance = distance_transform_edt(~mask)  # each pixel's distance to the pet, in the photo's pixels
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits.append(bool(mask[y, x]))
        near.append(bool(distance[y, x] <= cell / 2))
        ratios.append(float((heat * mask).sum() / max(heat.sum(), 1e-12) / share))
        centre = centre_gaussian(*mask.shape)
        cy, cx = mask.shape[0] // 2, mask.shape[1] // 2
        base_hits.append(bool(mask[cy, cx]))
        base_near.append(bool(distance[cy, cx] <= cell / 2))
        base_ratios.append(float((centre * mask).sum() / centre.sum() / share))
    return {"photos": len(frames),
            "heatmap": {"peak_hit_rate": float(np.mean(hits)), "peak_within_half_a_cell": float(np.mean(near)),
                        "mass_ratio_median": float(np.median(ratios))},
            "centre": {"peak_hit_rate": float(np.mean(base_hits)), "peak_within_half_a_cell": float(np.mean(base_near)),
                       "mass_ratio_median": float(np.median(base_ratios))},
            "heatmap_mass_beats_centre_on": int(sum(r > b for r, b in zip(ratios, base_ratios))),
            "peak_misses": [i for i, hit in enumerate(hits) if not hit]}


def photo_heatmaps(model, images: list) -> list:
    out = []
    for i in range(0, len(images), 32):
        out += [answer[2] for answer in model.predict_many_with_pet(images[i:i + 32], 1, explain=True)]
    return out


def sanity(run: Path, images: list) -> dict:
    """Spearman correlation of each map with the map of the same model whose head was re-drawn."""
    trained = rundir.load_model(run)
    model, arch, pre = trained.model.eval(), trained.cfg.model.arch, trained.preprocessing
    randomised = copy.deepcopy(model)
    torch.manual_seed(0)
    head_linear(randomised, arch).reset_parameters()  # nn.Linear's own initialisation, as training starts
    rhos, moved = [], []
    with torch.no_grad():
        for i in range(0, len(images), 32):
            x = torch.from_numpy(pre.batch_array(images[i:i + 32]))
            logits, maps = ClassMaps(model, model, arch)(x)
            _, random_maps = ClassMaps(randomised, randomised, arch)(x)
            top = logits.argmax(1)
            for row, k in enumerate(top):
                a, b = maps[row, k].flatten().numpy(), random_maps[row, k].flatten().numpy()
                rhos.append(float(spearmanr(a, b).statistic))
                moved.append(int(a.argmax()) != int(b.argmax()))
    return {"spearman_median": float(np.median(rhos)), "spearman_abs_median": float(np.median(np.abs(rhos))),
            "peak_cell_moved": float(np.mean(moved)), "photos": len(rhos)}


def grad_cam_against_exact(run: Path, images: list) -> dict:
    """Captum's Grad-CAM (with its ReLU) is the exact map's positive part for a linear head: measured, and timed."""
    trained = rundir.load_model(run)
    model, arch, pre = trained.model.eval(), trained.cfg.model.arch, trained.preprocessing
    x = torch.from_numpy(pre.batch_array(images[:16]))
    start = time.perf_counter()
    _, exact = heatmaps(model, arch, x)
    exact_s = time.perf_counter() - start
    from captum.attr import LayerGradCam

    from petlab.models import ARCHS

    start = time.perf_counter()
    target = model(x).argmax(1)
    grad = LayerGradCam(model, model.get_submodule(ARCHS[arch].cam_layer)).attribute(
        x, target=target, attribute_to_layer_input=ARCHS[arch].cam_layer_input, relu_attributions=True)[:, 0].detach()
    grad_s = time.perf_counter() - start
    return {"max_abs_difference": float((grad - exact.clamp(min=0)).abs().max()),
            "largest_value": float(grad.abs().max()),
            "exact_ms_per_photo": 1000 * exact_s / len(x), "captum_grad_cam_ms_per_photo": 1000 * grad_s / len(x)}


def figure(images: list, frames: list, masks: list, labels: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from petlab.inference.heatmap import PhotoHeatmap

    fig, axes = plt.subplots(3, 4, figsize=(16, 12))
    for ax, image, frame, mask, label in zip(axes.flat, images, frames, masks, labels):
        ax.imshow(PhotoHeatmap(label, frame).overlay(image, side=max(image.size)))
        ax.contour(mask, levels=[0.5], colors="cyan", linewidths=1.2)
        y, x = np.unravel_index(int(np.argmax(frame)), frame.shape)
        ax.plot([x], [y], marker="x", color="white", markersize=12, mew=3)
        ax.set_title(f"{label}: peak {'on' if mask[y, x] else 'OFF'} the pet", fontsize=11)
        ax.axis("off")
    fig.suptitle("Where the served cats-vs-dogs model looked (class-activation map of its top-1), "
                 "Oxford-IIIT Pet test photos; cyan: the official pet mask, x: the map's peak", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def serve_latency(registry: Path, photos: list[Path], requests: int) -> dict:
    data = [p.read_bytes() for p in photos]
    out = {}
    with tempfile.TemporaryDirectory() as tmp, demo_process(registry, Path(tmp) / "demo.log") as url, \
            httpx.Client(timeout=120) as client:
        for explain in ("false", "true", "false", "true"):  # interleaved twice; the second pass is kept
            server, wall = [], []
            for i in range(requests):
                start = time.perf_counter()
                response = client.post(f"{url}/api/predict", files={"file": (f"{i}.jpg", data[i % len(data)])},
                                       data={"explain": explain})
                wall.append(1000 * (time.perf_counter() - start))
                response.raise_for_status()
                server.append(response.json()["latency_ms"])
            out[f"explain={explain}"] = {"server_p50_ms": statistics.median(server),
                                         "client_p50_ms": statistics.median(wall), "requests": requests}
    return out


def predict_throughput(registry: Path, folder: Path) -> dict:
    photos = find_photos([str(folder)])
    out = {}
    with open_model("cats_vs_dogs", registry=Registry(registry)) as model, tempfile.TemporaryDirectory() as tmp:
        for explain in (False, True):
            start = time.perf_counter()
            predict_photos(model, photos, explain_dir=Path(tmp) / "overlays" if explain else None)
            out["with --explain" if explain else "without"] = len(photos) / (time.perf_counter() - start)
    return {"photos": len(photos), "photos_per_s": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cats-run", type=Path)
    parser.add_argument("--breeds-run", type=Path)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report-dir", type=Path, default=benchmark_report_dir("reports/heatmaps"),
                        help="results.json and pointing_game.png (default runs/benchmarks/heatmaps; the committed "
                             "figures: --report-dir reports/heatmaps)")
    args = parser.parse_args(argv)
    data = shared_data()
    oxford = data / OXFORD
    work = Path(tempfile.mkdtemp(prefix="petlab-heatmaps-"))
    os.environ.setdefault("PETLAB_CACHE_DIR", str(work / "cache"))
    cats_run = args.cats_run or train("lite0_features_cats_vs_dogs", data / "cats_and_dogs_filtered", work / "cats")
    breeds_run = args.breeds_run or train("breeds_features", oxford, work / "breeds")
    registry = work / "registry"
    subprocess.run([sys.executable, str(REPO / "experiments" / "promote.py"), "--registry", str(registry), "--task",
                    "cats_vs_dogs", "--run", str(cats_run)], check=True, cwd=REPO, stdout=sys.stderr)

    pairs = oxford_test_photos(oxford)
    images = [decode_photo(p) for p, _ in pairs]
    masks = [pet_mask(t, img.size) for (_, t), img in zip(pairs, images)]
    results = {"machine": machine(torch.device("cpu")), "photos": f"{OXFORD} official test list, with a trimap",
               "models": {}}
    served_frames = None
    for name, source in (("cats_vs_dogs (served: lite0_features_cats_vs_dogs, explain.onnx)", {"registry": registry}),
                         ("3 Oxford breeds (breeds_features, Lite2)", {"run": breeds_run})):
        kwargs = ({"task": "cats_vs_dogs", "registry": Registry(source["registry"])} if "registry" in source
                  else {"run": source["run"]})
        with open_model(**kwargs) as model:
            heats = photo_heatmaps(model, images)
            cells = [32 * (crop_box(*img.size, model.pre)[2] - crop_box(*img.size, model.pre)[0]) / model.pre.image_size
                     for img in images]
        frames = [h.frame for h in heats]
        served_frames = served_frames or (frames, [h.label for h in heats])
        run = cats_run if "registry" in source else breeds_run
        results["models"][name] = {"pointing_game": pointing(frames, masks, cells),
                                   "sanity_randomised_head": sanity(run, images)}
    results["grad_cam_vs_exact"] = grad_cam_against_exact(breeds_run, images)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    picks = [i for i in range(len(images)) if i % max(1, len(images) // FIGURE_PHOTOS) == 0][:FIGURE_PHOTOS]
    figure([images[i] for i in picks], [served_frames[0][i] for i in picks], [masks[i] for i in picks],
           [served_frames[1][i] for i in picks], args.report_dir / "pointing_game.png")
    results["serving"] = serve_latency(registry, [p for p, _ in pairs[:50]], args.requests)
    results["predict_explain"] = predict_throughput(registry, oxford / "images")
    (args.report_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    facts = results["machine"]
    print(f"CPU: {facts['cpu']} ({facts['cpu_capability']}), {facts['threads']} threads")
    print("| model | photos | peak on the pet: heatmap / centre | within half a cell: heatmap / centre | "
          "mass ratio (median): heatmap / centre | randomised head: Spearman median |")
    print("|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        p, s = r["pointing_game"], r["sanity_randomised_head"]
        print(f"| {name} | {p['photos']} | {p['heatmap']['peak_hit_rate']:.1%} / {p['centre']['peak_hit_rate']:.1%} | "
              f"{p['heatmap']['peak_within_half_a_cell']:.1%} / {p['centre']['peak_within_half_a_cell']:.1%} | "
              f"{p['heatmap']['mass_ratio_median']:.2f} / {p['centre']['mass_ratio_median']:.2f} | "
              f"{s['spearman_median']:.2f} (peak cell moved on {s['peak_cell_moved']:.0%}) |")
    g = results["grad_cam_vs_exact"]
    print(f"Grad-CAM (Captum, ReLU) vs the exact map's positive part: max difference "
          f"{g['max_abs_difference']:.2e} (values up to {g['largest_value']:.1f}); "
          f"{g['captum_grad_cam_ms_per_photo']:.1f} vs {g['exact_ms_per_photo']:.1f} ms/photo (eager, batch 16)")
    for key, v in results["serving"].items():
        print(f"/api/predict {key}: server p50 {v['server_p50_ms']:.1f} ms, client p50 {v['client_p50_ms']:.1f} ms")
    t = results["predict_explain"]
    print(f"predict.py on {t['photos']} photos: " + ", ".join(f"{k} {v:.1f} photos/s"
                                                            for k, v in t["photos_per_s"].items()))
    print(f"figure: {args.report_dir / 'pointing_game.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
