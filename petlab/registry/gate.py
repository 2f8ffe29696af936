"""Promotion only when better: the candidate against the production version, paired, on the same photos.

McNemar's exact test. Of the validation photos that exactly one of the two models gets right, b go
to the candidate and c to production. If the two were equally good, b would be Binomial(b + c, 1/2);
the candidate passes when b > c and the one-sided p-value is below ALPHA. Photos that both get
right (or both wrong) say nothing about which is better: pairing is what gives the test its power
on a few hundred photos, where two accuracies measured apart would differ by chance alone.

The photos are the candidate's validation photos (out-of-fold training photos for a cross-validated
run). Production is run on them as it is served (its export, its card's preprocessing and TTA).
If production was trained on some of them -- another split seed, or a cross-validated run -- the
comparison favours production; the message says so and `--force` is the way past it.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from petlab.data.images import load_rgb
from petlab.inference.model import load_version
from petlab.registry.store import Registry
from petlab.registry.torch_fallback import load_weights_only

ALPHA = 0.05
TEST = "exact McNemar test, one-sided (candidate better)"


def mcnemar(candidate_right: np.ndarray, production_right: np.ndarray) -> dict:
    """The paired comparison of two models' per-photo correctness on the same photos."""
    b = int(np.sum(candidate_right & ~production_right))
    c = int(np.sum(~candidate_right & production_right))
    p_value = float(binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
    n = len(candidate_right)
    candidate, production = float(candidate_right.mean()), float(production_right.mean())
    return {"photos": n, "candidate_accuracy": candidate, "production_accuracy": production,
            "difference": candidate - production, "candidate_only_right": b, "production_only_right": c,
            "test": TEST, "p_value": p_value, "alpha": ALPHA, "significantly_better": b > c and p_value < ALPHA}


def compare_with_production(registry: Registry, task: str, production: dict, classes: list[str],
                            validation: dict, source: str) -> dict:
    """Run the production version on the candidate's validation photos and test the difference.
    validation: {"files", "targets", "probs"} of the candidate; source: which photos those are."""
    version = production["version"]
    served = load_version(registry, task, version, fallback=load_weights_only)
    base = {"production_version": version, "production_run": production.get("source_run"), "photos_from": source}
    if served.classes != list(classes):
        return {**base, "comparable": False, "significantly_better": False,
                "reason": f"production v{version} predicts other classes ({len(served.classes)}: "
                          f"{served.classes[:5]}...) than the candidate ({len(classes)})"}
    targets = np.asarray(validation["targets"])
    production_probs = served.predict_images(load_rgb, validation["files"], calibrated=False)
    result = mcnemar(np.asarray(validation["probs"]).argmax(1) == targets, production_probs.argmax(1) == targets)
    return {**base, "comparable": True, **result}


def explain(comparison: dict, candidate: str) -> str:
    """The comparison in one paragraph: what was compared, the numbers, the verdict."""
    v = comparison["production_version"]
    if not comparison["comparable"]:
        return f"{candidate} cannot be compared with production v{v}: {comparison['reason']}"
    c = comparison
    verdict = ("significantly better" if c["significantly_better"] else "not significantly better")
    return (f"{candidate} is {verdict} than production v{v} on the same {c['photos']} photos ({c['photos_from']}): "
            f"accuracy {c['candidate_accuracy']:.2%} vs {c['production_accuracy']:.2%} "
            f"(difference {100 * c['difference']:+.2f} points); only the candidate is right on "
            f"{c['candidate_only_right']} photos, only production on {c['production_only_right']}; "
            f"{c['test']}: p = {c['p_value']:.3g} (promotion needs p < {c['alpha']})")
