"""Command-line flags for the experiment scripts, generated from the config's own fields.

A field declared with `setting(..., flag=...)` in config.py becomes a flag with that field's type,
choices and help; booleans take `--x` / `--no-x` (argparse.BooleanOptionalAction). A flag left
unset overrides nothing, so `--config FILE` and its defaults stay in charge.
"""

from __future__ import annotations

import argparse
import types
import typing

from petlab.config import allowed_values, config_fields


def _flag_name(key: str, flag: str | bool) -> str:
    return flag if isinstance(flag, str) else "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _one_of(key: str, choices: tuple):
    def parse(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return value
    return parse


def run_flags() -> dict[str, tuple[str, dict]]:
    """flag -> (dotted config key, argparse keyword arguments), for every field that has a flag."""
    flags = {}
    for key, f, hint in config_fields():
        flag = f.metadata.get("flag")
        if not flag:
            continue
        kinds = [k for k in typing.get_args(hint) if k is not type(None)] if isinstance(hint, types.UnionType) \
            else [hint]
        kind = kinds[0]
        kwargs: dict = {"help": f.metadata.get("help"), **f.metadata.get("argparse", {})}
        if kind is not bool:
            kwargs["metavar"] = key.rsplit(".", 1)[-1].upper()
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:  # several values at once, or one per repeated flag (append)
            if kwargs.get("action") != "append":
                kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(kind)[0]
        else:
            kwargs["type"] = kind
            choices = allowed_values(f)
            if choices is not None:  # checked by the config's own rule, so flag and YAML say the same thing
                kwargs["type"] = _one_of(key, choices)
                kwargs["metavar"] = "{" + ",".join(choices) + "}"
        flags[_flag_name(key, flag)] = (key, kwargs)
    return flags


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (key, kwargs) in run_flags().items():
        parser.add_argument(flag, dest=key, default=None, **kwargs)
    parser.add_argument("--config", help="experiment YAML (experiments/configs/*.yaml); flags override it")


def overrides_from(args: argparse.Namespace) -> dict:
    """The dotted overrides the user gave (False included: --no-augment means augment false)."""
    values = vars(args)
    return {key: values[key] for key, _ in run_flags().values() if values.get(key) is not None}
