"""Photos per second of experiments/predict.py's labelling on the production model, by batch size.

    python benchmarks/batch_predict.py [--registry DIR] [--task cats_vs_dogs] [--photos DIR] [--limit 1000]
                                       [--batch-sizes 1 16 64] [--json]

Labels the photos (default: the 1,000 photos of cats_and_dogs_filtered/validation) as predict.py does --
decoding overlapped with the model, rows written atomically to a CSV after every batch -- once per batch
size, after one warm-up batch, and prints the wall time and photos per second of each, beside the decode
alone (the ceiling no batch size passes). The figures go to reports/speed/batch_predict.json (--report).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import benchmark_report_dir, shared_data  # benchmarks/common.py (this script's folder)

from petlab.batch_predict import decode, find_photos, model_identity, open_model, predict_photos
from petlab.engine.speed import cpu_model
from petlab.registry import Registry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="default $PETLAB_REGISTRY_DIR or models/registry")
    parser.add_argument("--task", default="cats_vs_dogs")
    parser.add_argument("--photos", type=Path, default=shared_data() / "cats_and_dogs_filtered" / "validation")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=benchmark_report_dir("reports/speed") / "batch_predict.json",
                        help="where the figures are written")
    args = parser.parse_args(argv)
    photos = find_photos([str(args.photos)])[:args.limit]
    figures = {"cpu": cpu_model(), "photos": len(photos), "by_batch_size": {}}
    with open_model(args.task, registry=Registry(args.registry)) as model, \
            tempfile.TemporaryDirectory(prefix="petlab-bench-") as tmp:
        figures["model"] = f"{model_identity(model)} ({model.card.get('arch')}, {model.fmt})"
        predict_photos(model, photos[:16], None, 5, 16)  # warm-up: sessions, the first batch's allocations
        with ThreadPoolExecutor(max_workers=2) as pool:
            start = time.perf_counter()
            list(pool.map(decode, photos))
            figures["decode_only_photos_per_s"] = len(photos) / (time.perf_counter() - start)
        for batch in args.batch_sizes:
            out = Path(tmp) / f"labels-{batch}.csv"
            start = time.perf_counter()
            rows = predict_photos(model, photos, out, 5, batch)
            seconds = time.perf_counter() - start
            assert len(rows) == len(photos) and not any(r["error"] for r in rows)
            figures["by_batch_size"][batch] = {"seconds": seconds, "photos_per_s": len(photos) / seconds}
    print(f"{figures['model']}, {len(photos)} photos, {figures['cpu']}")
    print(f"  decode alone (2 threads): {figures['decode_only_photos_per_s']:.0f} photos/s")
    for batch, f in figures["by_batch_size"].items():
        print(f"  batch {batch:3d}: {f['seconds']:.1f} s, {f['photos_per_s']:.0f} photos/s")
    args.report.write_text(json.dumps(figures, indent=2))
    if args.json:
        print(json.dumps(figures, indent=2))
    print(f"-> {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
