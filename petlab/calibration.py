"""Calibrated probabilities: temperature scaling and the measures that show it worked.

A module of its own, importing nothing of petlab: promotion, the server and the comparison
report all use it.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the
logits by one scalar T fitted on the validation split by minimising the negative log-likelihood.
It never changes which class wins, so accuracy is untouched; only the confidence moves.

Everything here works on predicted *probabilities*: log p differs from the logits by a per-row
constant, which softmax ignores, so softmax(log p / T) is exactly temperature scaling -- and the
same formula applies to the flip-averaged probabilities a TTA model serves.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15  # Guo et al.'s choice; equal-width confidence bins
# A validation split the model gets entirely right has no finite optimum (T -> 0 keeps lowering its
# NLL): the fitted T is kept within these bounds so such a model is not made infinitely sure.
TEMPERATURE_RANGE = (0.05, 20.0)


def apply_temperature(probs, temperature: float):
    """softmax(log p / T), computed in float64. numpy in: float64 out, with numpy alone (the server's path,
    which imports no torch); a torch tensor in: a tensor of its dtype out."""
    if type(probs).__module__.startswith("torch"):
        import torch

        scaled = torch.softmax(probs.to(torch.float64).clamp_min(1e-12).log() / temperature, dim=1)
        return scaled.to(probs.dtype)
    log_p = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / temperature
    exp = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The T that minimises the NLL of softmax(log p / T) on these (validation) predictions."""
    import torch  # here, not at the top: the server imports this module for apply_temperature only

    log_p = torch.as_tensor(probs, dtype=torch.float64).clamp_min(1e-12).log()
    y = torch.as_tensor(targets, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(log_p / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(float(log_t.detach().exp()), *TEMPERATURE_RANGE))


def reliability_bins(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (of the top prediction)."""
    confidence, correct = probs.max(1), (probs.argmax(1) == targets).astype(float)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        return {"confidence": np.bincount(which, confidence, bins) / count,
                "accuracy": np.bincount(which, correct, bins) / count, "count": count,
                "edges": np.linspace(0, 1, bins + 1)}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of photos) x |accuracy - mean confidence|."""
    b = reliability_bins(probs, targets, bins)
    used = b["count"] > 0
    return float(np.sum(b["count"][used] / len(targets) * np.abs(b["accuracy"][used] - b["confidence"][used])))


def nll(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each prediction's negative log-probability of its true class (its loss, given probabilities)."""
    return -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None))


def mean_nll(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-probability of the true class (the loss of predictions given as probabilities)."""
    return float(nll(probs, targets).mean())


def calibrate(predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Fit T on predictions["val"] = (probs, targets); ECE and NLL before and after on every split given."""
    temperature = fit_temperature(*predictions["val"])
    report = {"temperature": round(temperature, 4), "method": "temperature scaling fitted on val (LBFGS, NLL)",
              "ece_bins": ECE_BINS}
    for split, (probs, targets) in predictions.items():
        after = apply_temperature(probs, temperature)
        report[split] = {"n": int(len(targets)),
                         "ece_before": expected_calibration_error(probs, targets),
                         "ece_after": expected_calibration_error(after, targets),
                         "nll_before": mean_nll(probs, targets), "nll_after": mean_nll(after, targets)}
    return report


def reliability_panel(probs: np.ndarray, targets: np.ndarray, temperature: float) -> dict:
    """What a reliability diagram draws for one set of predictions: bins and ECE before and after T."""
    after = apply_temperature(probs, temperature)
    return {"before": reliability_bins(probs, targets), "after": reliability_bins(after, targets),
            "ece_before": expected_calibration_error(probs, targets),
            "ece_after": expected_calibration_error(after, targets), "temperature": temperature}
