"""How well the audit finds dirt put in on purpose, and how long it takes from a cold cache.

    python benchmarks/audit.py [--data-dir DIR] [--out reports/audit/benchmark.json]

On copies of the shared photos: flips a seeded 5% of cats_and_dogs_filtered/train's labels and 10% of
oxford-pets-37breeds-5shot/train's, and leaks 20 train photos into cats_and_dogs_filtered's validation split
(80% size, 10% crop, JPEG quality 60, 5 of them mirrored). Then audits each copy with an empty cache and
reports: the precision and recall of the audit's top-N label errors (N: the number flipped) against a
random ranking's; the share of the leaks found; every near-copy pair among the untouched photos; seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, benchmark_report_dir, shared_data  # benchmarks/common.py (this script's folder)

from petlab.audit import run_audit
from tests.dirty_data import copy_dataset, flip_labels, leak_into

CASES = [("cats_vs_dogs", "cats_and_dogs_filtered", 0.05, 20), ("breeds", "oxford-pets-37breeds-5shot", 0.10, 0)]


def measure(task: str, source: Path, fraction: float, leaks: int, work: Path) -> dict:
    data = copy_dataset(source, work / source.name)
    flipped = flip_labels(data / "train", fraction, seed=0)
    held_out = data / ("validation" if (data / "validation").is_dir() else "test")
    leaked = leak_into(data / "train", held_out, leaks, min(5, leaks), seed=1) if leaks else {}
    start = time.perf_counter()
    info = run_audit(str(data), task, work / "report" / source.name, cache_dir=str(work / "cache"), tracking="none")
    seconds = time.perf_counter() - start
    # files in the reports are relative to the data folder
    rows = [{**r, "file": str(data / r["file"]), "partner_file": str(data / r["partner_file"])}
            for r in csv.DictReader(open(work / "report" / source.name / "findings.csv"))]
    ranked = [str(data / r["file"]) for r in csv.DictReader(open(work / "report" / source.name / "label_ranking.csv"))
              if r["split"] == "train"]  # every scored photo by margin, flagged or not: the top-N list
    top = ranked[:len(flipped)]
    hits = sum(f in flipped for f in top)
    train_size = sum(1 for _ in (data / "train").rglob("*.jpg"))
    pairs = [r for r in rows if r["kind"] in ("leak", "conflict", "duplicate")]
    found = {r["file"] for r in pairs if leaked.get(r["file"]) == r["partner_file"]}
    untouched = [(Path(r["file"]).name, Path(r["partner_file"]).name, r["kind"], r["score"]) for r in pairs
                 if r["file"] not in leaked and r["partner_file"] not in leaked]
    return {"task": task, "data": source.name, "photos": info["summary"]["photos"], "seconds_cold": round(seconds, 1),
            "flipped": len(flipped), "flagged_label_errors": info["summary"]["findings"]["label_error"],
            "top_n_precision": hits / max(len(top), 1), "top_n_recall": hits / len(flipped),
            "random_ranking_precision_and_recall": len(flipped) / train_size,
            "leaks": len(leaked), "leaks_found": len(found),
            "leak_recall": len(found) / len(leaked) if leaked else None,
            "pairs_among_untouched_photos": untouched, "findings": info["summary"]["findings"]}


def acting_on_it(data: Path, work: Path, fraction: float = 0.10) -> dict:
    """experiments/configs/lite0_features_cats_vs_dogs.yaml trained on cats_and_dogs_filtered with a seeded 10% of
    train's labels flipped: as it is, then without the audit's label-error findings (data.exclude). Test accuracy
    of each (the untouched validation/ split is its test)."""
    from petlab.config import load_config
    from petlab.engine.experiment import run_experiment

    copy = copy_dataset(data / "cats_and_dogs_filtered", work / "cats_and_dogs_filtered")
    flipped = flip_labels(copy / "train", fraction, seed=0)
    run_audit(str(copy), "cats_vs_dogs", work / "report", cache_dir=str(work / "cache"), tracking="none")
    findings = work / "report" / "findings.csv"
    excluded = [r["file"] for r in csv.DictReader(open(findings)) if r["kind"] == "label_error"]
    accuracy = {}
    for name, extra in (("flipped", {}), ("flipped, audit's label errors excluded",
                                         {"data.exclude": str(findings), "data.exclude_kinds": ["label_error"]})):
        cfg = load_config(REPO / "experiments" / "configs" / "lite0_features_cats_vs_dogs.yaml",
                          {"data.dataset": None, "data.data_dir": str(copy), "output_dir": str(work / "runs"),
                           "tracking.backend": "none", **extra})
        accuracy[name] = run_experiment(cfg).results["test"]["accuracy"]
    return {"flipped": len(flipped), "excluded": len(excluded), "excluded_that_were_flipped":
            sum(f in flipped for f in excluded), "test_accuracy": accuracy}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="the shared photos (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=benchmark_report_dir("reports/audit") / "benchmark.json",
                        help="default runs/benchmarks/audit/benchmark.json; the committed one: "
                             "reports/audit/benchmark.json")
    parser.add_argument("--act", action="store_true", help="also train lite0_features_cats_vs_dogs on 10%% flipped "
                                                             "labels, before and after excluding the audit's findings")
    args = parser.parse_args(argv)
    data = args.data_dir or shared_data()
    if args.act:
        with tempfile.TemporaryDirectory() as work:
            acted = acting_on_it(data, Path(work))
        print(json.dumps(acted, indent=2))
        (args.out.parent / "acting_on_it.json").write_text(json.dumps(acted, indent=2) + "\n")
        return 0
    results = []
    for task, name, fraction, leaks in CASES:
        with tempfile.TemporaryDirectory() as work:
            results.append(measure(task, data / name, fraction, leaks, Path(work)))
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| data | photos | flipped | top-N precision | top-N recall | random | leaks found | pairs among untouched "
          "| seconds (cold) |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        leak = f"{r['leaks_found']}/{r['leaks']}" if r["leaks"] else "-"
        print(f"| {r['data']} | {r['photos']} | {r['flipped']} | {r['top_n_precision']:.2f} | "
              f"{r['top_n_recall']:.2f} | {r['random_ranking_precision_and_recall']:.2f} | {leak} | "
              f"{len(r['pairs_among_untouched_photos'])} | "
              f"{r['seconds_cold']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
