"""The training toolkit (issue 15, first part): gradient clipping, gradient accumulation, warm-up for any schedule."""

import json

import pytest
import torch

from petlab.config import ConfigError, load_config
from petlab.engine.budget import lr_factor
from petlab.engine.step import build_optimizer, build_scheduler
from petlab.models import build_model
from tests.recipe import TINY, Recipe
from tests.trainers import tiny_trainer


def grads_norm(model) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))


def test_clipping_bounds_the_norm_of_the_gradients_the_optimizer_applies(tmp_path, red_vs_blue):
    # the gradients left after fit() are the ones the last optimizer step applied; label smoothing keeps them
    # from vanishing once red and blue are told apart (without it, a run can end at a norm of 2e-7)
    common = {"train.epochs": 1, "train.lr": 0.05, "train.label_smoothing": 0.2}
    free = tiny_trainer(tmp_path / "free", red_vs_blue, **common)
    free.fit()
    assert grads_norm(free.model) > 0.5  # without clipping this run's gradients are larger than the bound
    clipped = tiny_trainer(tmp_path / "clipped", red_vs_blue, **common, **{"train.clip_grad": 0.5})
    clipped.fit()
    assert grads_norm(clipped.model) <= 0.5 + 1e-4


def test_4_batches_of_8_accumulated_make_the_same_update_as_1_batch_of_32(tmp_path, red_vs_blue):
    # BatchNorm in eval mode (freeze_batchnorm): otherwise a batch of 8 is normalised by other statistics
    common = {"train.epochs": 1, "train.optimizer": "sgd", "train.lr": 0.01, "model.freeze_batchnorm": True,
              "data.augment": False, "diagnostics.enabled": False}
    big = tiny_trainer(tmp_path / "big", red_vs_blue, **common, **{"train.batch_size": 32})
    small = tiny_trainer(tmp_path / "small", red_vs_blue, **common, **{"train.batch_size": 8, "train.accumulate": 4})
    before = {k: v.clone() for k, v in big.model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in small.model.state_dict().items())  # the same start
    big.fit()
    small.fit()
    assert small.steps_per_epoch == 4 and big.steps_per_epoch == 1
    moved = 0
    for name, weight in big.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[name], weight, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(weight, before[name])
    assert moved > 10  # one optimizer step really happened in both
    # the accumulated run's epoch loss is still over all 32 images
    assert small.state.history[0]["train_loss"] == pytest.approx(big.state.history[0]["train_loss"], rel=1e-5)


def lrs(overrides: dict, steps: int) -> list[float]:
    cfg = Recipe(TINY).shrink({"train.lr": 0.1, **overrides}).config()
    model, _ = build_model("resnet18", 2)
    optimizer = build_optimizer(cfg.train, cfg.model, model)
    scheduler = build_scheduler(cfg.train, optimizer, steps)
    out = []
    for _ in range(cfg.train.epochs * steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warm_up_starts_at_a_hundredth_of_the_lr_and_reaches_it_for_any_schedule():
    cosine = lrs({"train.scheduler": "cosine", "train.epochs": 4, "train.warmup_epochs": 1}, steps=10)
    assert cosine[0] == pytest.approx(0.001) and cosine[10] == pytest.approx(0.1)
    assert cosine[:11] == sorted(cosine[:11]) and cosine[10:] == sorted(cosine[10:], reverse=True)
    assert cosine[-1] < 0.002
    constant = lrs({"train.scheduler": "none", "train.epochs": 3, "train.warmup_epochs": 0.5}, steps=10)
    assert constant[0] == pytest.approx(0.001) and constant[5:] == pytest.approx([0.1] * 25)
    plain = lrs({"train.scheduler": "cosine", "train.epochs": 2}, steps=10)
    assert plain[0] == pytest.approx(0.1)  # no warm-up unless asked for
    # the time-budgeted shapes warm up the same way
    assert lr_factor("cosine", 0.0, 0.25) == pytest.approx(0.01) and lr_factor("cosine", 0.25, 0.25) == 1.0
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        load_config(overrides={"train.epochs": 2, "train.warmup_epochs": 2})


def test_mixup_and_cutmix_targets_sum_to_1_and_a_mixed_epoch_trains(tmp_path, red_vs_blue):
    trainer = tiny_trainer(tmp_path, red_vs_blue, **{"train.epochs": 1, "data.mixup": 0.4, "data.cutmix": 1.0})
    images, labels = next(iter(trainer.loaders["train"]))
    torch.manual_seed(0)
    mixed_any = False
    for _ in range(4):  # each call mixes the batch with one of the two
        x, target = trainer.step.mix(trainer.step.prepare(images), labels)
        assert x.shape == (8, 3, 32, 32) and target.shape == (8, 2)
        torch.testing.assert_close(target.sum(1), torch.ones(8))
        mixed_any |= bool(((target > 0) & (target < 1)).any())
    assert mixed_any  # real mixing, not one-hot labels
    row = trainer.fit().history[0]
    assert 0 < row["train_loss"] < 10 and 0 <= row["train_accuracy"] <= 1
    with pytest.raises(ConfigError, match="data.mixup"):
        load_config(overrides={"data.mixup": 0.2, "data.augment": False})


def test_fp16_trains_with_a_gradient_scaler_that_resume_keeps(tmp_path, red_vs_blue):
    trainer = tiny_trainer(tmp_path, red_vs_blue, **{"train.epochs": 3, "train.precision": "fp16"})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state = trainer.fit()
    assert trainer.step.scaler is not None and all(0 < r["train_loss"] < 10 for r in state.history)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["scaler"]
    assert saved["scale"] == trainer.step.scaler.get_scale()
    again = tiny_trainer(tmp_path / "again", red_vs_blue, **{"train.epochs": 3, "train.precision": "fp16"})
    again.resume(tmp_path / "checkpoints" / "last.pt")
    assert again.step.scaler.get_scale() == trainer.step.scaler.get_scale()


def test_the_ema_follows_the_decay_formula_and_is_what_best_pt_holds(tmp_path, red_vs_blue):
    common = {"train.epochs": 1, "train.ema": 0.9, "train.optimizer": "sgd", "train.lr": 0.01,
              "diagnostics.enabled": False}
    one = tiny_trainer(tmp_path / "one", red_vs_blue, **common, **{"train.limit_batches": 1})
    one.fit()  # w1: the weights after the first step
    two = tiny_trainer(tmp_path / "two", red_vs_blue, **common, **{"train.limit_batches": 2})
    two.fit()  # w2, and the EMA of w1 then w2 (the first update copies, as AveragedModel does)
    w1, w2, ema = one.model.state_dict(), two.model.state_dict(), two.step.ema.module.state_dict()
    floats = [k for k, v in w2.items() if v.is_floating_point()]
    assert floats and any(not torch.equal(w1[k], w2[k]) for k in floats)
    for k in floats:  # parameters and BatchNorm statistics alike (use_buffers)
        torch.testing.assert_close(ema[k], 0.9 * w1[k] + 0.1 * w2[k], rtol=1e-5, atol=1e-6, msg=k)
    best = torch.load(tmp_path / "two" / "checkpoints" / "best.pt", weights_only=False)["model"]
    last = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=False)
    for k in floats:
        assert torch.equal(best[k], ema[k])  # evaluated, exported and served: the EMA weights
        assert torch.equal(last["model"][k], w2[k])  # training resumes from the raw weights
    assert last["ema"] is not None


class TinyNet(torch.nn.Module):
    """A few layers (with resnet18's head name), so that torch.compile takes seconds, not minutes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_compile_trains_a_tiny_model_and_reports_compile_time_apart(tmp_path, red_vs_blue):
    trainer = tiny_trainer(tmp_path, red_vs_blue, model=TinyNet(),
                           **{"train.epochs": 2, "train.compile": True, "diagnostics.enabled": False})
    state = trainer.fit()
    compile_seconds = trainer.hook_results()["compile_seconds"]  # the CompileTimer hook's part of results.json
    assert trainer.trainable.compiled is not None and compile_seconds > 0
    first, second = state.history
    assert first["train_seconds"] < compile_seconds  # the compiling step is not training time
    assert all(0 < r["train_loss"] < 10 for r in state.history) and second["train_loss"] < first["train_loss"] + 1


@pytest.mark.slow
def test_lr_find_writes_its_figure_and_a_suggestion_in_the_swept_range_and_a_sweep_centres_on_it(tmp_path, tiny,
                                                                                                red_vs_blue):
    from PIL import Image

    from petlab.search.space import centre_lr, load_sweep
    from tests.runs import REPO, only_run_dir, script

    proc = script("lr_find.py", *tiny.on(red_vs_blue).argv("--steps", "40", "--start", "1e-5", "--end", "10",
                                                           "--output-dir", tmp_path / "runs", "--tracking", "none"))
    run_dir = only_run_dir(tmp_path / "runs")
    result = json.loads((run_dir / "lr_find.json").read_text())
    assert 3 <= result["steps"] <= 40 and len(result["lrs"]) == len(result["losses"]) == result["steps"]
    assert result["lrs"] == sorted(result["lrs"]) and result["lrs"][0] == pytest.approx(1e-5)
    assert result["lrs"][0] <= result["suggestion"] <= result["lrs"][-1]
    assert f"suggested lr: {result['suggestion']:.3g}" in proc.stdout
    with Image.open(run_dir / "lr_find.png") as figure:
        assert figure.width >= 600 and figure.height >= 300
    sweep = centre_lr(load_sweep(REPO / "experiments/configs/sweeps/lite0_cats_vs_dogs.yaml"), run_dir)
    assert sweep.space["train.lr"] == {"type": "loguniform", "low": pytest.approx(result["suggestion"] / 10),
                                       "high": pytest.approx(result["suggestion"] * 10)}
