"""torchrun: two processes on this machine (gloo) train the run one process trains, as one run."""

import json
import subprocess
import sys

import pytest
import torch

from tests.recipe import FAST_RESNET
from tests.runs import REPO, only_run_dir, read_metrics, script


def torchrun(*args, processes: int = 2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(REPO / "experiments" / "run.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.distributed
def test_two_processes_match_one_with_the_same_global_batch(shared, tiny, tmp_path):
    recipe = tiny.shrink({**FAST_RESNET, "train.epochs": 4, "train.weight_decay": 0.05}).on(
        shared / "cats_and_dogs_filtered")
    script("run.py", *recipe.argv("--output-dir", tmp_path / "single"))
    proc = torchrun(*recipe.argv("--output-dir", tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    single, ddp = only_run_dir(tmp_path / "single"), only_run_dir(tmp_path / "ddp")  # rank 1 made no folder
    one, two = (json.loads((d / "results.json").read_text()) for d in (single, ddp))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["status"] == two["status"] == "completed"
    # Same results files, and one tracked experiment (rank 0's offline archive).
    for name in ("config.yaml", "metrics.csv", "model_summary.txt", "checkpoints/best.pt", "learning_curves.png",
                 "confusion_matrix.png"):
        assert (ddp / name).is_file(), name
    assert len(list((ddp / "comet").glob("*.zip"))) == 1
    assert "rank 1" not in (ddp / "train.log").read_text()

    # Same optimisation: the global batch (32 = 2 x 16) gives the same steps per epoch and schedule,
    # so the learning curves and accuracies agree within seed noise (BatchNorm sees 16 images per rank).
    curves = [read_metrics(d) for d in (single, ddp)]
    assert [len(c) for c in curves] == [4, 4]
    for a, b in zip(*curves):
        assert float(a["lr"]) == float(b["lr"])
    assert float(curves[1][-1]["train_loss"]) < float(curves[1][0]["train_loss"])  # it learned
    for split in ("val", "test"):
        assert one[split]["accuracy"] > 0.6 and two[split]["accuracy"] > 0.6, (split, one[split], two[split])
        assert abs(one[split]["accuracy"] - two[split]["accuracy"]) <= 0.05, (split, one[split], two[split])
    # The gathered predictions cover the whole split exactly once.
    assert sum(sum(row) for row in two["test"]["confusion_matrix"]) == two["usable_sizes"]["test"]

    ckpt = torch.load(ddp / "checkpoints" / "best.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the plain model, not the DDP wrapper


@pytest.mark.distributed
def test_a_global_batch_that_does_not_split_is_refused(shared, tiny, tmp_path):
    recipe = tiny.shrink({**FAST_RESNET, "train.batch_size": 33, "train.epochs": 1}).on(
        shared / "cats_and_dogs_filtered")
    proc = torchrun(*recipe.argv("--output-dir", tmp_path))
    assert proc.returncode != 0
    assert "train.batch_size: 33 is the global batch and must divide evenly over 2 processes" in proc.stderr
    assert not any(tmp_path.iterdir())
