"""Every command README.md and docs/ give a user works as written (tests/documented.py reads them).

- Each `python`/`torchrun` command is parsed by its own script's parser, exactly as typed (a flag the script
  does not have, a `--config` given to sweep.py, a bad duration fails here), and every repository or shared
  file it names exists. Each `make` target exists.
- A chain of them runs for real on small real photos in a copy of the repository, and afterwards git finds
  no committed file changed and nothing new outside git-ignored folders but what the command was told to
  write (`--out labels.csv`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from petlab.cli import overrides_from
from petlab.config import load_config
from tests.documented import REPO, Command, documented_commands

COMMANDS = documented_commands()
# What a document's <placeholder> stands for when a command is parsed: the user's own value.
PLACEHOLDERS = {"run-id": "20261201-lite0", "set": "cats_and_dogs_filtered", "recipe": "lite0_cats_vs_dogs",
                "file": "cat.jpg"}
SCRIPTS = [command for command in COMMANDS if command.argv()[0] in ("python", "torchrun")]
MAKE = [command for command in COMMANDS if command.argv()[0] == "make"]


class Parsed(Exception):
    """Raised in place of the script's work once its parser accepted the command line."""


def script_and_args(argv: list[str]) -> tuple[Path, list[str]]:
    if argv[0] == "torchrun":  # torchrun's own options come before the script
        index = next(i for i, word in enumerate(argv) if word.endswith(".py"))
        return REPO / argv[index], argv[index + 1:]
    return REPO / argv[1], argv[2:]


def parse_with_the_script(script: Path, args: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"documented_{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in the script looks its module up there
    with mock.patch.object(sys, "path", [str(script.parent), *sys.path]):  # as `python script.py` has it
        spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, *a, **kw):
        raise Parsed(parser, real(parser, *a, **kw))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        try:
            module.main(args)
        except Parsed as parsed:
            parser, namespace = parsed.args
        except SystemExit as exc:
            if exc.code in (0, None):  # --help
                return
            raise AssertionError(f"{script.name} refused {args}") from exc
        else:
            raise AssertionError(f"{script.name} never parsed its command line")
    try:
        if hasattr(module, "check_arguments"):  # the rules between flags (sweep.py)
            module.check_arguments(parser, namespace)
        if script.name == "run.py" and not namespace.resume:  # every value checked against the config schema
            load_config(namespace.config, overrides_from(namespace))
    except SystemExit as exc:
        raise AssertionError(f"{script.name} refused {args}") from exc


def named_files(argv: list[str], shared_root: Path) -> list[Path]:
    """The repository and shared files a command names (configs, sweeps, weights, shared data folders)."""
    named = []
    for word in argv:
        value = word.split("=", 1)[-1]
        if value.startswith("../shared/"):
            named.append(shared_root.parent / value.removeprefix("../shared/"))
        elif value.startswith(("experiments/", "benchmarks/", "demo/")) and "<" not in value:
            named.append(REPO / value)
    return named


@pytest.mark.parametrize("command", SCRIPTS, ids=lambda command: command.where)
def test_each_documented_script_command_is_accepted_by_its_script(command: Command, shared, capsys):
    argv = command.argv(PLACEHOLDERS)
    script, args = script_and_args(argv)
    assert script.is_file(), f"{command.where}: {script.relative_to(REPO)} does not exist"
    for path in named_files(argv, shared.parent / "data"):
        assert path.exists(), f"{command.where}: {path} does not exist"
    parse_with_the_script(script, args)


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


@pytest.mark.parametrize("command", MAKE, ids=lambda command: command.where)
def test_each_documented_make_command_names_a_target_and_variables_the_makefile_has(command: Command):
    text = (REPO / "Makefile").read_text()
    words = command.argv(PLACEHOLDERS)[1:]
    targets = [word for word in words if "=" not in word]
    assert targets and set(targets) <= makefile_targets(), f"{command.where}: {targets}"
    for variable in (word.split("=")[0] for word in words if "=" in word):
        assert f"$({variable})" in text, f"{command.where}: the Makefile does not read {variable}"


def test_the_documents_hold_the_commands_a_user_needs():
    """The extraction itself: a change to the Markdown that hid every command would pass the tests above."""
    texts = {command.text for command in COMMANDS}
    assert len(SCRIPTS) > 50 and len(MAKE) > 20
    assert "python experiments/run.py --arch custom_cnn" in texts
    assert any(text.startswith("curl -F file=@cat.jpg -F task=cats_vs_dogs") for text in texts)


# The chain a user follows through README.md, each command exactly as its document gives it (optional
# `[--flags]` as noted); `..` for the shared data is the small copy below, `runs/<run-id>` the features run.
CHAIN = [
    "python experiments/run.py --help",
    "python experiments/audit.py --data-dir ../shared/data/cats_and_dogs_filtered",
    "python experiments/run.py --config experiments/configs/lite0_features_cats_vs_dogs.yaml "
    "--exclude runs/audit/cats_and_dogs_filtered/findings.csv --exclude-kinds label_error",
    "python experiments/run.py --arch custom_cnn --limit-batches 2 --epochs 1",
    "python experiments/evaluate.py runs/<run-id> --data-dir my_photos/ --tta flip",
    "python experiments/compare.py --runs runs --task cats_vs_dogs",
    "python experiments/promote.py --task cats_vs_dogs",
    "python experiments/promote.py --list",
    "python experiments/predict.py photos/ --out labels.csv --explain overlays/",
    "python experiments/predict.py a.jpg photos/ --task breeds --top-k 3 --out labels.json",
    "python experiments/sweep.py --sweep experiments/configs/sweeps/lite0_cats_vs_dogs.yaml "
    "--data-dir ../shared/data/cats_and_dogs_filtered --trials 3",  # the README's [--trials 20], smaller
    "python experiments/sweep.py --sweep experiments/configs/sweeps/lite0_cats_vs_dogs.yaml --retrain-best",
    "make space",
]
# A documented command may exit this way on purpose (predict.py --task breeds: no breeds model promoted here).
EXPECTED_EXIT = {"python experiments/predict.py a.jpg photos/ --task breeds --top-k 3 --out labels.json": 2}
CURL = ["curl -F file=@cat.jpg -F task=cats_vs_dogs -F top_k=2 http://127.0.0.1:7860/api/predict",
        "curl -F file=@rocket.jpg -F task=cats_vs_dogs http://127.0.0.1:7860/api/predict",
        "curl -F file=@cat.jpg -F task=cats_vs_dogs -F explain=true http://127.0.0.1:7860/api/predict",
        "curl http://127.0.0.1:7860/api/health"]
# What the user brings and what a command was told to write: the only new paths git may see.
USERS_OWN = {"photos/", "my_photos/", "a.jpg", "cat.jpg", "rocket.jpg", "labels.csv", "labels.json", "overlays/"}


def documented_texts() -> set[str]:
    return {" ".join(command.argv()) for command in COMMANDS}


def test_the_chain_is_documented_word_for_word():
    texts = documented_texts()
    trimmed = {"--trials 3": "--trials 20 --workers 2"}
    for text in CHAIN + CURL:
        for ours, theirs in trimmed.items():
            text = text.replace(ours, theirs)
        assert " ".join(Command("", 0, text).argv()) in texts, f"not in the documents: {text}"


def repository_copy(dest: Path) -> Path:
    """The files git tracks (and new ones it does not ignore), committed in a fresh repository: what a clone
    holds. Its `.venv` runs this interpreter, so `make` uses it as `make setup` would have left it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest / ".venv" / "bin").mkdir(parents=True)
    (dest / ".venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (dest / ".venv" / "bin" / "python").chmod(0o755)
    (dest / ".venv" / ".installed").touch()
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                                                     "clone"]):
        subprocess.run(["git", *command], cwd=dest, check=True, capture_output=True)
    return dest


def changed_by_commands(repo: Path) -> list[str]:
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [line for line in status if not (line.startswith("?? ") and line[3:] in USERS_OWN)]


@pytest.mark.slow
def test_the_readme_chain_runs_as_written_and_leaves_git_clean(shared, tiny_photos, tmp_path):
    from PIL import Image

    from tests.servers import demo_server

    repo = repository_copy(tmp_path / "petlab")
    data = tmp_path / "shared" / "data" / "cats_and_dogs_filtered"  # the official layout, fewer photos
    for folder, count in (("train", 40), ("validation", 12)):  # val: 20% of train; promotion verifies on 11+
        for cls in ("cats", "dogs"):
            (data / folder / cls).mkdir(parents=True)
            for photo in sorted((shared / "cats_and_dogs_filtered" / folder / cls).iterdir())[:count]:
                shutil.copyfile(photo, data / folder / cls / photo.name)
    shutil.copytree(tiny_photos / "test", repo / "photos")
    shutil.copytree(tiny_photos / "val", repo / "my_photos")
    cat = next((tiny_photos / "test" / "cats").glob("*.jpg"))
    shutil.copyfile(cat, repo / "a.jpg")
    env = {**os.environ, "PYTHONPATH": str(repo), "PETLAB_DATA_DIR": str(data.parent),  # `python`: the venv's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PETLAB_HOME", None)
    ran = []
    for text in CHAIN:
        if "<run-id>" in text:
            (features_run,) = [p.parent.name for p in (repo / "runs").glob("*/config.yaml")
                               if "efficientnet_lite0" in p.read_text()]
            text = text.replace("<run-id>", features_run)
        argv = Command("", 0, text.replace("../shared/data", str(data.parent))).argv()
        proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == EXPECTED_EXIT.get(text, 0), f"{text} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        assert changed_by_commands(repo) == [], f"after `{text}` git sees: {changed_by_commands(repo)}"
        ran.append(text)
    user = tmp_path / "user"  # curl from the user's own folder, where the photos are
    user.mkdir()
    shutil.copyfile(cat, user / "cat.jpg")
    Image.linear_gradient("L").resize((320, 240)).convert("RGB").save(user / "rocket.jpg")  # no pet in it
    with demo_server(None, tmp_path / "demo.log", app=repo / "demo" / "app.py", cwd=repo, env=env) as (url, _):
        port = url.rsplit(":", 1)[1]
        for text in CURL:
            argv = Command("", 0, text.replace(":7860", f":{port}")).argv()
            proc = subprocess.run([*argv, "--silent", "--show-error", "--fail-with-body"], cwd=user,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{text}: {proc.stdout[-500:]} {proc.stderr[-500:]}"
            answer = json.loads(proc.stdout)
            assert "/api/health" in text or (answer["task"] == "cats_vs_dogs" and answer["predictions"]), answer
            assert "/api/health" not in text or answer["status"] == "ok", answer
            ran.append(text)
    assert changed_by_commands(repo) == []
    print("\n".join(["documented commands run, each followed by a clean `git status`:", *ran]))


def test_the_readme_stays_a_guide():
    """What to run first and where things are; the measurements live beside their figures in docs/."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 400
