"""Model cards: what a registered version is, what it expects as input, and where it came from."""

from __future__ import annotations

from pathlib import PurePath


def preprocessing_steps(pre: dict) -> str:
    """The eval preprocessing in words; the demo and the exported graph's callers must do exactly this."""
    return (f"decode to RGB (EXIF rotation applied, first frame of an animation, transparency on white); "
            f"resize the short side to {pre['resize_size']} px ({pre['interpolation']}, antialiased); "
            f"centre-crop {pre['resize_size']}x{pre['resize_size']}, then centre-crop "
            f"{pre['image_size']}x{pre['image_size']}; scale to [0, 1]; normalise with mean {pre['mean']} and "
            f"std {pre['std']}. Input: float32 NCHW [N, 3, {pre['image_size']}, {pre['image_size']}]; "
            f"output: logits [N, num_classes] (softmax for probabilities). Preprocessing is outside the graph.")


def _name(path: str | None) -> str | None:
    """The last part of a path: cards written before paths were kept out still show no absolute path."""
    return PurePath(path).name if path else path


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def card_markdown(card: dict) -> str:
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
        *(["Predictions average the photo and its mirror image (test-time augmentation), as in evaluation.", ""]
          if card.get("tta") == "flip" else []),
        f"Selected by **{sel['metric']} = {sel['value']:.4f}** among {sel['candidates']} candidate run(s); "
        "the test split was never used to choose.",
        "",
        "## Input",
        preprocessing_steps(card["preprocessing"]),
        "",
        "## Files",
        *(f"- `{name}`: {what}" for name, what in card["files"].items()),
        "",
        "## Provenance",
        f"- dataset: {card.get('dataset')} ({_name(card.get('dataset_root'))})",
        f"- source run: `{_name(card['source_run'])}`",
        f"- Comet: {comet.get('url') or comet.get('key') or 'not tracked'} ({comet.get('registration', 'n/a')})",
        f"- git: {git.get('commit', 'unknown')}{' (dirty)' if git.get('dirty') else ''}",
        f"- created: {card['created_at']}",
        "",
    ]
    return "\n".join(lines)
