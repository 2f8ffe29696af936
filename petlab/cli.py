"""Command-line flags for the experiment scripts, generated from the config's own fields.

A field declared with `setting(..., flag=...)` in config.py becomes a flag with that field's type,
choices and help; booleans take `--x` / `--no-x` (argparse.BooleanOptionalAction). A flag left
unset overrides nothing, so `--config FILE` and its defaults stay in charge. Every key, flagged or not, is
also reachable as `--set section.key=value` (a YAML value, checked exactly as in a config file).
"""

from __future__ import annotations

import argparse
import difflib
import types
import typing

from petlab.config import allowed_values, config_fields, parse_value
from petlab.errors import ConfigError


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
    parser.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                        help="any config key, flagged or not (repeatable): --set model.backbone_lr_scale=0.05, "
                             "--set train.cv_lrs=[1e-3,3e-3]; the value is YAML, checked as in a config file")


def parse_set(items: list[str]) -> dict:
    """--set KEY=VALUE items -> dotted overrides. Unknown keys are refused here, with the nearest known ones."""
    known = [key for key, _, _ in config_fields()]
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, such as train.momentum=0.95")
        if key not in known:
            near = difflib.get_close_matches(key, known, n=3) or [k for k in known if k.endswith("." + key)]
            raise ConfigError(f"--set {key}: no such config key" + (f"; did you mean {', '.join(near)}?" if near
                                                                       else " (keys look like train.lr)"))
        try:
            out[key] = parse_value(text)
        except ConfigError as exc:
            raise ConfigError(f"--set {key}: {exc}") from None
    return out


def overrides_from(args: argparse.Namespace) -> dict:
    """The dotted overrides the user gave (False included: --no-augment means augment false), flags and --set."""
    values = vars(args)
    flagged = {key: values[key] for key, _ in run_flags().values() if values.get(key) is not None}
    extra = parse_set(values.get("set_values") or [])
    both = sorted(key for key in extra if key in flagged and extra[key] != flagged[key])
    if both:
        raise ConfigError(f"{', '.join(both)}: given both as a flag and by --set, with different values")
    return {**flagged, **extra}
