"""Repository promises: pins agree, the README's commands are what CI runs, the tree stays clean."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from conftest import REPO


def test_environment_yml_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = set(project["dependencies"]).union(*extras.values())
    pins = {p for p in pins if not p.startswith(project["name"] + "[")}  # dev = [..., "cellloc[serve]"]
    assert {f"{project['name']}[{name}]" for name in extras if name != "dev"} <= set(extras["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) == pins
    assert "python=3.11" in env["dependencies"]
    assert all("==" in p for p in pins)
    assert "torch==2.13.0" in pins


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) >= 2
    demo, tests = (b.strip() for b in blocks[:2])
    assert "\n" not in demo and "\n" not in tests
    assert "src/demo.py" in demo and "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert "README.md" in ci


def test_no_generated_files_tracked():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout (e.g. an sdist): nothing to check
        return
    bad = [f for f in files if re.search(r"\.(pth|pt|ckpt|npz|npy|zip|tar|tif|tiff)$", f) or f.startswith(("input/synth", "output/"))]
    assert not bad
