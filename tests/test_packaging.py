"""The conda env file and pyproject must name the same packages, or one of the two install paths breaks."""
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

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


def _torch_install_line(tmp_path, *variables: str) -> str:
    """The pip line that installs torch into a fresh venv, as `make` would run it (dry run: nothing installed)."""
    venv = tmp_path / "venv"
    result = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), f"VENV={venv}", *variables, f"{venv}/.installed"],
                            capture_output=True, text=True, timeout=60, check=True)
    lines = [line for line in result.stdout.splitlines() if "pip install" in line]
    return next(line for line in lines if "torch" in line and "constraints" not in line)


def test_make_installs_the_pinned_torch_first_and_takes_a_cuda_index_when_asked(tmp_path):
    default = _torch_install_line(tmp_path)
    assert default.split()[-1] == "torch==2.13.0" and "--index-url" not in default
    cuda = _torch_install_line(tmp_path, "TORCH_INDEX=https://download.pytorch.org/whl/cu128")
    assert cuda.split()[-3:] == ["--index-url", "https://download.pytorch.org/whl/cu128", "torch==2.13.0"]
    # Whatever 2.13.0 build went in (+cpu, +cu128) satisfies the constraint every later install runs under.
    from packaging.specifiers import SpecifierSet
    pin = next(line for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch"))
    assert all(SpecifierSet(pin.removeprefix("torch")).contains(build) for build in ("2.13.0+cpu", "2.13.0+cu128"))


STAGE_SCRIPTS = ["data/prompts/stage1_prompts.py", "diffusion/stage2_generate.py",
                 "embeddings/stage3_embed_generated.py", "data/nsynth/render_soundfont.py",
                 "interp/stage4_concept_sets.py", "interp/stage5_embed_nsynth.py", "interp/stage6_probe.py",
                 "interp/stage6_activations.py"]


def _plain_environment() -> dict:
    """The user's shell: no PYTHONPATH pointing at the checkout."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def test_every_stage_script_runs_from_any_directory_without_an_install(tmp_path):
    # Started together: each pays its own imports (torch, transformers), the wall time is shared.
    runs = {script: subprocess.Popen([sys.executable, str(REPO_ROOT / script), "--help"], cwd=tmp_path,
                                     env=_plain_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
            for script in STAGE_SCRIPTS}
    for script, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{script}: {err[-1500:]}"
        assert out.startswith("usage: ") and "--data" in out, script


def test_the_four_packages_import_from_anywhere_in_the_environment_and_nothing_else(tmp_path):
    """The Makefile installs the checkout editable: data, diffusion, embeddings and interp (the notebooks' API,
    interp.artifacts) import from any directory, from a checkout (not a copy in site-packages, which an edit would
    leave behind); bench/ and tests/ stay out of the environment."""
    code = ("import data.contract, diffusion, embeddings, interp.artifacts, pathlib; "
            "print(pathlib.Path(interp.artifacts.__file__).resolve().parent.parent)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_plain_environment(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, ("the checkout's packages are not installed in this environment — run `make "
                                    "install` (pip install -e): " + result.stderr[-1000:])
    checkout = result.stdout.strip().splitlines()[-1]
    assert not checkout.startswith(sysconfig.get_paths()["purelib"]), checkout
    assert (Path(checkout) / "interp" / "stage6_probe.py").is_file() and (Path(checkout) / "pyproject.toml").is_file()
    for name in ("bench", "tests", "conftest"):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, env=_plain_environment(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, (name, result.stderr)


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


def _no_deps_pins(text: str) -> dict:
    """`pip install ... --no-deps NAME==VERSION` lines -> {name: version}."""
    return dict(re.findall(r"pip install .*--no-deps ([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", text))


def test_packages_installed_without_their_dependencies_are_pinned_alike_and_installed():
    """tinysoundfont and musicnn are added with --no-deps (their declared requirements must not come along):
    the Makefile and the conda file name the same pins, pyproject says why they are absent, and they are the
    versions installed. musicnn's declared tensorflow is not in the environment (the port reads its weights)."""
    makefile = _no_deps_pins((REPO_ROOT / "Makefile").read_text())
    conda = _no_deps_pins((REPO_ROOT / "requirements.yaml").read_text())
    assert makefile == conda and set(makefile) == {"tinysoundfont", "musicnn"}, (makefile, conda)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    for name, pinned in makefile.items():
        assert f"{name}=={pinned}" in pyproject, name
        assert importlib.metadata.version(name) == pinned, name
    assert importlib.util.find_spec("tensorflow") is None
