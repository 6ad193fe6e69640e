"""Style holds itself: ruff's lint and format checks (configured in pyproject.toml) pass on the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check", "--output-format", "concise"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_passes(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"ruff {' '.join(command)} . failed (fix with `ruff check --fix .` / `ruff format .`):\n{result.stdout}{result.stderr}"


# Which top-level folder may import which: each library folder builds on the ones listed, never on
# launch/ (the entry points). A new arrow here is a design change, made on purpose.
LAYERS = {
    "core": set(),
    "conf": set(),
    "envs": {"core", "conf"},
    "actors": {"core", "conf", "envs"},
    "reward": {"core", "conf", "actors"},
    "learner": {"core", "conf", "envs", "actors"},
    "pipeline": {"core", "conf", "envs", "actors", "reward", "learner"},
}


def imported_folders(path: Path) -> set[str]:
    import ast

    folders = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        )
        folders |= {name.split(".")[0] for name in names}
    return folders


def test_nothing_outside_launch_imports_launch_and_the_library_folders_keep_their_layers():
    wrong = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        folder = path.relative_to(ROOT).parts[0]
        if folder in ("launch", ".venv") or folder.startswith("."):
            continue
        used = imported_folders(path) & (set(LAYERS) | {"launch", "benchmarks", "tests"})
        allowed = LAYERS.get(folder, set(LAYERS) | {"tests", "benchmarks"}) | {folder}
        wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(used - allowed)]
    assert not wrong, "\n".join(wrong)
