"""One definition of "best" (petlab/monitor.py): train.monitor decides best.pt, early stopping, a sweep's
objective and promotion's choice alike. And hooks (petlab/engine/hooks.py): a mechanism joins the training
loop without an edit of the engine."""

import csv
import json
import math

import pytest
import yaml

from petlab.engine.experiment import run_experiment
from petlab.errors import ConfigError, PromotionError
from petlab.monitor import Monitor
from petlab.registry.promote import chosen_metric, select_best
from petlab.reports.runs import leaderboard, read_local_run
from petlab.search.space import grid_sweep, load_sweep
from tests.imaging import make_imagefolder
from tests.recipe import HEAD_ONLY, TINY, Recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("monitor"), {"train": 12, "val": 8, "test": 2})


def history(run_dir) -> list[dict]:
    with (run_dir / "metrics.csv").open() as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def replay(rows: list[dict], monitor: Monitor, patience: int) -> tuple[int, int]:
    """(best epoch, epochs run) that `monitor` and early stopping at `patience` decide over the epochs."""
    best, best_epoch, waited = {}, 0, 0
    for row in rows:
        if monitor.improved(row, best):
            best, best_epoch, waited = row, int(row["epoch"]), 0
        else:
            waited += 1
            if waited >= patience:
                return best_epoch, int(row["epoch"])
    return best_epoch, int(rows[-1]["epoch"])


def test_the_monitor_compares_its_metric_and_breaks_ties_with_the_other():
    loss, accuracy = Monitor("val_loss"), Monitor()
    assert (loss.mode, loss.direction, loss.key) == ("min", "minimize", "loss")
    assert (accuracy.mode, accuracy.direction, accuracy.key) == ("max", "maximize", "accuracy")
    best = {"val_loss": 0.5, "val_accuracy": 0.75}
    assert loss.improved({"val_loss": 0.4, "val_accuracy": 0.5}, best)  # lower loss wins, whatever the accuracy
    assert not accuracy.improved({"val_loss": 0.4, "val_accuracy": 0.5}, best)
    assert accuracy.improved({"val_loss": 0.45, "val_accuracy": 0.75}, best)  # a tie: the lower loss
    assert loss.improved({"val_loss": 0.5, "val_accuracy": 0.8}, best)  # a tie: the higher accuracy
    assert loss.improved({"val_loss": math.nan, "val_accuracy": math.nan}, best)  # no validation: the latest
    with pytest.raises(ValueError, match="unknown metric"):
        Monitor("test_accuracy")


def test_train_monitor_val_loss_decides_best_pt_early_stopping_the_sweep_and_promotion(data, tmp_path):
    runs = {}
    for metric in ("val_loss", "val_accuracy"):
        # a high learning rate, so that loss and accuracy disagree about the best epoch now and then
        cfg = Recipe(TINY).on(data).shrink({"train.monitor": metric, "train.epochs": 6, "train.lr": 0.05,
                                            "train.early_stopping_patience": 2, "tracking.backend": "none"}).config(
            output_dir=str(tmp_path / metric))
        outcome = run_experiment(cfg)
        assert outcome.exit_code == 0
        rows = history(outcome.run_dir)
        best_epoch, epochs = replay(rows, Monitor(metric), patience=2)
        # best.pt and early stopping follow the monitor
        assert outcome.results["best_epoch"] == best_epoch and outcome.results["epochs_completed"] == epochs
        assert outcome.results["stopped_by"] == ("early_stopping" if epochs < 6 else None)
        best = rows[best_epoch - 1]
        assert outcome.results["val"]["loss"] == pytest.approx(best["val_loss"], abs=1e-4)  # the kept weights'
        runs[metric] = read_local_run(outcome.run_dir)
    # promotion chooses by the candidates' own monitor, and refuses to guess between two
    loss_runs = [runs["val_loss"]]
    assert chosen_metric(None, loss_runs) == "val_loss"
    with pytest.raises(PromotionError, match="different metrics"):
        chosen_metric(None, list(runs.values()))
    chosen, value = select_best(list(runs.values()), "val_loss")
    assert value == min(r.results["val"]["loss"] for r in runs.values())
    # the leaderboard ranks runs monitored alike by their monitor
    board = leaderboard(loss_runs * 1)
    assert list(board["monitor"]) == ["val_loss"]

    # a sweep over a val_loss recipe optimises val_loss, minimising, and its trials keep best.pt by it
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"name": "tiny", "task": "cats_vs_dogs", **Recipe(TINY).shrink(
        {**HEAD_ONLY, "train.monitor": "val_loss"}).yaml()}))
    sweep = grid_sweep(base, {"seed": {"type": "grid", "values": [0, 1]}})
    assert (sweep.metric, sweep.direction) == ("val_loss", "minimize")
    from petlab.search.runner import trial_config

    assert trial_config(sweep, "s", {"seed": 0}, {}, []).train.monitor == "val_loss"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"study": "s", "base": "base.yaml", "direction": "maximize",
                                          "space": {"seed": {"type": "grid", "values": [0, 1]}}}))
    with pytest.raises(ConfigError, match="contradicts val_loss"):
        load_sweep(sweep_file)


def test_a_metric_added_here_is_monitored_end_to_end(data, tmp_path):
    """A metric is one entry in monitor.METRICS: this one, registered here and nowhere in petlab, is computed
    each epoch, written to metrics.csv, chooses best.pt, survives an interruption and a resume, is a sweep's
    objective, and ranks the leaderboard, the summary and the promotion."""
    from sklearn.metrics import balanced_accuracy_score

    from petlab.engine.hooks import Hook
    from petlab.engine.outcome import Interrupted
    from petlab.monitor import METRICS, VAL_LOSS, Metric, register

    name = "val_balanced_accuracy"
    register(Metric(name, "max", lambda t, p, loss: float(balanced_accuracy_score(t, p.argmax(1))),
                    "balanced_accuracy", tie_breaker=VAL_LOSS))
    try:
        class InterruptAfterEpoch2(Hook):
            def on_epoch_end(self, trainer, row):
                if row["epoch"] == 2:
                    raise Interrupted("as Ctrl-C would")

        cfg = Recipe(TINY).on(data).shrink({"train.monitor": name, "train.epochs": 4, "train.lr": 0.05,
                                            "tracking.backend": "none"}).config(output_dir=str(tmp_path / "runs"))
        assert run_experiment(cfg, hooks=[InterruptAfterEpoch2()]).status == "interrupted"
        (run_dir,) = (tmp_path / "runs").iterdir()
        outcome = run_experiment(resume=run_dir)
        rows = history(outcome.run_dir)
        assert outcome.exit_code == 0 and len(rows) == 4 and all(name in row for row in rows)
        best_epoch, _ = replay(rows, Monitor(name), patience=99)
        assert outcome.results["best_epoch"] == best_epoch  # best.pt by the new metric, across the resume
        record = read_local_run(outcome.run_dir)
        assert record.monitor == Monitor(name) and chosen_metric(None, [record]) == name
        assert select_best([record], name)[1] == record.results["val"]["balanced_accuracy"]
        board = leaderboard([record])
        assert board.loc[0, f"best_{name}"] == record.results["val"]["balanced_accuracy"]
        base = tmp_path / "base.yaml"
        base.write_text(yaml.safe_dump({"name": "tiny", "task": "cats_vs_dogs", **Recipe(TINY).shrink(
            {**HEAD_ONLY, "train.monitor": name}).yaml()}))
        sweep = grid_sweep(base, {"seed": {"type": "grid", "values": [0, 1]}})
        assert (sweep.metric, sweep.direction) == (name, "maximize")
    finally:
        METRICS.pop(name)


def test_a_hook_defined_here_changes_the_training_without_an_edit_of_the_engine(data, tmp_path):
    """A new mechanism joins the loop as a hook (petlab/engine/hooks.py): this one stops after epoch 1 of 4."""
    from petlab.engine.hooks import Hook

    class StopAfterFirstEpoch(Hook):
        def __init__(self):
            self.started, self.rows = 0, []

        def on_fit_start(self, trainer):
            self.started += 1

        def on_epoch_end(self, trainer, row):
            self.rows.append(row)
            if row["epoch"] >= 1:
                trainer.request_stop("stop_after_first_epoch")

    hook = StopAfterFirstEpoch()
    cfg = Recipe(TINY).on(data).shrink({"train.epochs": 4, "tracking.backend": "none"}).config(
        output_dir=str(tmp_path / "runs"))
    outcome = run_experiment(cfg, hooks=[hook])
    assert outcome.exit_code == 0 and hook.started == 1 and [r["epoch"] for r in hook.rows] == [1]
    assert outcome.results["epochs_completed"] == 1 and outcome.results["stopped_by"] == "stop_after_first_epoch"
    assert len(history(outcome.run_dir)) == 1


def test_a_step_level_hook_reads_the_gradient_norm_and_ends_an_epoch_between_steps(data, tmp_path):
    """The loop's own mechanisms are hooks too (the budget, diagnostics, compile timing, the profiler, batch
    logging, early stopping); a new one can ask for the gradient norm and stop an epoch between steps."""
    from petlab.engine.hooks import Hook

    class NormsThenStop(Hook):
        def __init__(self):
            self.norms, self.stopped_at = [], None

        def needs_grad_norm(self, trainer, at):
            return True

        def on_batch_end(self, trainer, at):
            if at.group_end:
                self.norms.append(at.grad_norm)

        def before_step(self, trainer, at):
            if at.epoch == 1 and at.step == 2:
                self.stopped_at = (at.epoch, at.step)
                trainer.request_stop("norms_read", now=True)

    hook = NormsThenStop()
    # 12 training photos a class at batch 8 (val takes none from train here): 3 batches an epoch
    cfg = Recipe(TINY).on(data).shrink({"train.epochs": 2, "tracking.backend": "none",
                                        "tracking.log_every_steps": 100}).config(output_dir=str(tmp_path / "runs"))
    outcome = run_experiment(cfg, hooks=[hook])
    assert outcome.exit_code == 0 and hook.stopped_at == (1, 2)
    assert len(hook.norms) == 3 + 2 and all(isinstance(n, float) and math.isfinite(n) for n in hook.norms)


# A mechanism with state, written here and nowhere in petlab: it counts every training batch the run has trained
# on, across a kill and a resume. It kills its own process (SIGKILL: no handler, no last words) in the middle of
# epoch 3, after two batches it has counted in memory but that no checkpoint holds.
STATEFUL_HOOK_RUN = """
import json, os, signal, sys
from pathlib import Path
from petlab.config import load_config
from petlab.engine.experiment import run_experiment
from petlab.engine.hooks import Hook

class BatchCounter(Hook):
    def __init__(self):
        self.batches = 0
    def state_dict(self):
        return {"batches": self.batches}
    def load_state_dict(self, state):
        self.batches = state["batches"]
    def results(self, trainer):
        return {"batches_trained": self.batches}
    def on_batch_end(self, trainer, at):
        self.batches += 1
        if at.epoch == 2 and at.step == 1 and os.environ.get("KILL_IN_EPOCH_3"):
            os.kill(os.getpid(), signal.SIGKILL)

mode, arg = sys.argv[1], sys.argv[2]
if mode == "start":
    outcome = run_experiment(load_config(None, json.loads(arg)), hooks=[BatchCounter()])
else:
    outcome = run_experiment(resume=Path(arg), hooks=[BatchCounter()])
print(json.dumps(outcome.results["batches_trained"]))
"""


@pytest.mark.slow
def test_a_stateful_hook_written_here_survives_a_kill_and_a_resume(data, tmp_path):
    """Each hook owns its state (engine/hooks.py): this one, unknown to the trainer, the checkpoint and the
    outcome, is saved in last.pt under its own key, given back on --resume and reports its own results.json
    key. The killed epoch's counted batches are not in last.pt, so the resumed run counts exactly 4 epochs."""
    import os
    import subprocess
    import sys

    import torch

    script = tmp_path / "stateful_hook_run.py"
    script.write_text(STATEFUL_HOOK_RUN)
    overrides = Recipe(TINY).on(data).shrink({"train.epochs": 4, "tracking.backend": "none"}).overrides(
        output_dir=str(tmp_path / "runs"))
    env = {**os.environ, "KILL_IN_EPOCH_3": "1"}
    killed = subprocess.run([sys.executable, str(script), "start", json.dumps(overrides)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    steps = 3  # 12 training photos a class at batch 8: 3 batches an epoch
    assert last["state"]["epoch"] == 2 and last["hooks"]["BatchCounter"] == {"batches": 2 * steps}
    env.pop("KILL_IN_EPOCH_3")
    resumed = subprocess.run([sys.executable, str(script), "resume", str(run_dir)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_completed"] == 4 and results["batches_trained"] == 4 * steps
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == 4 * steps


def test_the_standard_mechanisms_are_hooks_built_from_their_config_sections():
    from petlab.config import load_config
    from petlab.data.transforms import Preprocessing
    from petlab.engine.budget import Budget
    from petlab.engine.checkpoint import CheckpointSaver
    from petlab.engine.epoch_log import EpochLog
    from petlab.engine.trainer import recording_hooks, standard_hooks
    from petlab.tracking import Tracker

    cfg = load_config(None, {"train.early_stopping_patience": 2, "train.compile": True, "diagnostics.profile": True})
    monitor = Monitor(cfg.train.monitor)
    hooks = standard_hooks(cfg, monitor, Budget(60), 16, 2, Tracker(), run_dir=None)
    names = [type(h).__name__ for h in hooks]
    assert names == ["EarlyStopping", "BudgetHook", "CompileTimer", "DiagnosticsHook", "EpochBar",
                     "BatchLog"]  # no profiler trace without a run dir
    assert hooks[0].monitor is monitor  # early stopping waits on the Monitor that keeps best.pt
    plain = [type(h).__name__ for h in standard_hooks(load_config(None, {}), monitor, None, 0, 2, Tracker(), None)]
    assert plain == ["DiagnosticsHook", "EpochBar", "BatchLog"]
    # what records an epoch comes after a run's own hooks, so what they add to the state is saved
    saver = CheckpointSaver(None, True, cfg, ["a", "b"], Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    recording = recording_hooks(saver, EpochLog(None, True, Tracker()))
    assert [type(h).__name__ for h in recording] == ["Checkpointing", "EpochLog", "SignalStop"]
    assert recording[0].saver is saver


def test_a_train_step_is_handed_its_parts_without_a_config():
    """engine/step.py's TrainStep takes its optimizer, schedule and loss: a test of the step needs no Config."""
    import torch

    from petlab.engine.step import TrainStep

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    step = TrainStep(model, optimizer, device=torch.device("cpu"), clip_grad=1.0,
                     scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))
    x, y = torch.randn(32, 4), (torch.arange(32) % 2)
    x[y == 1] += 2.0  # separable
    losses = []
    for _ in range(5):
        step.zero_grad()
        _, loss, _ = step.forward_backward(model, x, y)
        norm = step.optimizer_step(read_norm=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] and norm is not None and step.lr == 0.5 * 0.5 ** 5


def test_under_a_latency_budget_ties_go_to_the_run_quicker_to_answer():
    """promote.py --max-latency-ms: among equally accurate runs the one that answers sooner on this CPU wins
    (without a budget, the one that trained sooner)."""
    from petlab.engine.latency import this_cpu
    from petlab.reports.runs import RunRecord

    def run(name: str, answer_ms: float, train_s: float) -> RunRecord:
        latency = {"p50_ms": answer_ms, "cpu": this_cpu(), "not_a_pet": "from the model's own pass"}
        return RunRecord(name, {"task": "cats_vs_dogs", "model": {"arch": "efficientnet_lite0"}},
                         {"val": {"accuracy": 0.9975}, "wall_time_s": train_s, "latency": latency})

    trains_sooner, answers_sooner = run("a", 9.0, 10.0), run("b", 6.0, 50.0)
    assert select_best([trains_sooner, answers_sooner], "val_accuracy")[0] is trains_sooner
    assert select_best([trains_sooner, answers_sooner], "val_accuracy", by_latency=True)[0] is answers_sooner
