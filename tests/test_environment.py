"""requirements.txt pins everything, and environment.yml's pip section is the same list."""

from pathlib import Path

import yaml

REPO = Path(__file__).parents[1]


def requirement_lines():
    return [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_every_requirement_is_pinned_and_torch_pair_is_the_working_one():
    lines = requirement_lines()
    assert all("==" in line for line in lines), [line for line in lines if "==" not in line]
    assert "torch==2.14.1" in lines and "torchvision==0.29.1" in lines


def test_environment_yml_matches_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == requirement_lines()
