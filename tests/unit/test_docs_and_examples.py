"""The specs users copy from must be valid: every example file and every spec block in
the README goes through the same validation and lint as `rollout lint`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rollout import app as wiring
from rollout.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
BASE = {"model": "iris", "registry": {"type": "git", "url": "/srv/registry"}}


def readme_yaml_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_lint(path):
    spec = load_spec(path)
    assert wiring.lint(spec), f"{path.name} makes an empty plan"


@pytest.mark.parametrize("block", readme_yaml_blocks(), ids=lambda b: b.split("\n", 1)[0][:30])
def test_readme_spec_blocks_are_valid(block):
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    spec = parse_spec({**BASE, **data}, source="README block")
    wiring.lint(spec)


def test_readme_has_spec_blocks_to_check():
    assert len(readme_yaml_blocks()) >= 3
