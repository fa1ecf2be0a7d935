"""The conda env file and pyproject must name the same packages, or one of the two install paths breaks."""
import re
import tomllib

import yaml

from conftest import REPO_ROOT


def _names(requirements):
    return {re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for requirement in requirements}


def test_requirements_yaml_mirrors_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"]) | _names(project["optional-dependencies"]["test"])
    environment = yaml.safe_load((REPO_ROOT / "requirements.yaml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert _names(pip_section) == declared


def test_torch_is_pinned_to_the_cpu_wheel_everywhere():
    assert "torch==2.13.0" in (REPO_ROOT / "constraints.txt").read_text()
    assert "torch==2.13.0" in (REPO_ROOT / "requirements.yaml").read_text()
    assert "torch==2.13.0" in (REPO_ROOT / "Makefile").read_text()


def _requirements(requirements):
    from packaging.requirements import Requirement
    return {Requirement(text).name.lower().replace("_", "-"): Requirement(text) for text in requirements}


def test_declared_ranges_hold_the_versions_the_suite_runs_on_and_agree():
    """A range that admits versions the code was never run on (transformers 4 for CLAP's pooler_output) lies."""
    from importlib.metadata import version

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirements(project["dependencies"] + project["optional-dependencies"]["test"])
    for name, requirement in declared.items():
        installed = version(name)
        assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed} not in {requirement}"
        assert requirement.specifier, f"{name} has no version range"
    environment = yaml.safe_load((REPO_ROOT / "requirements.yaml").read_text())
    pip_section = _requirements(next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict)))
    for name, requirement in pip_section.items():
        if name != "torch":  # pinned to the CI wheel there
            assert requirement.specifier == declared[name].specifier, name
