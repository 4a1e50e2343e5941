"""The package as a user gets it: `python -m build` gives an sdist and a wheel without a warning, and the wheel,
installed alone into a fresh venv with the runtime dependencies only (`vqinc[cpu]`: no torch, no test tools), runs
`vqinc info` and `vqinc demo` on the bundled model and histories from `/`, far from the source tree.

Needs `build` (the dev extra) and a package index that pip can reach for numpy, tokenizers, tqdm, onnxruntime.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the source tree has that a build must not see: environments, caches, earlier build outputs
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", ".hypothesis", "runs", "out")


def _env() -> dict[str, str]:
    """The caller's environment without what points into this one (the venv, the test's sys.path) and without
    PYTHONDONTWRITEBYTECODE, which makes setuptools warn that byte-compiling is disabled."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(cmd: list[str], cwd: Path | str, timeout: float) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE, symlinks=True)  # a build writes build/ and *.egg-info
    out = _run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)], cwd=tmp, timeout=300)
    warnings = [ln for ln in out.splitlines() if re.search(r"warn", ln, re.IGNORECASE)]
    assert warnings == [], "python -m build warned:\n" + "\n".join(warnings)
    wheels = sorted((tmp / "dist").glob("vqinc-*.whl"))
    assert len(wheels) == 1 and len(list((tmp / "dist").glob("vqinc-*.tar.gz"))) == 1
    return wheels[0]


def test_the_wheel_carries_the_model_the_histories_and_the_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    model = REPO / "runtime" / "default_model"
    shipped = {f"vqinc/runtime/default_model/{p.name}" for p in model.iterdir() if p.suffix != ".py"}
    assert shipped and shipped <= names  # every file of the bundled model (its manifest lists their sha256)
    assert {"vqinc/runtime/data/pep-dev-histories.jsonl.gz", "vqinc/runtime/serve/static/index.html",
            "vqinc/runtime/cli.py", "vqinc/ops/README.md"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "vqinc/tests")) for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta.splitlines()


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel and its runtime dependencies only."""
    env = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(env)], cwd="/", timeout=120)
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[cpu]"], cwd="/", timeout=300)
    return env


def test_installed_alone(venv):
    py = str(venv / "bin" / "python")
    where = _run([py, "-c", "import importlib.util as u, vqinc.runtime as r; print(r.__file__); "
                  "print([m for m in ('torch', 'onnx', 'transformers', 'pytest') if u.find_spec(m)])"], "/", 60)
    path, missing = where.splitlines()[:2]
    assert Path(path).resolve().is_relative_to(venv.resolve()) and missing == "[]"


def test_info_and_demo_run_from_root(venv):
    vqinc = str(venv / "bin" / "vqinc")
    info = _run([vqinc, "info"], cwd="/", timeout=60)
    assert re.search(r"^model directory   .*/site-packages/vqinc/runtime/default_model$", info, re.MULTILINE), info
    assert re.search(r"^graphs            \d+ files, .* \(sha256 checked\)", info, re.MULTILINE), info
    assert re.search(r"^labels            Informational, Process, Standards Track$", info, re.MULTILINE), info

    demo = _run([vqinc, "demo", "--limit", "1", "--max-revisions", "2", "--max-tokens", "256", "--threads", "1"],
                cwd="/", timeout=120)
    first = re.search(r"^(pep-\d{4}): (\d+) revisions, (\d+) edits, true label: (.+)$", demo, re.MULTILINE)
    assert first, demo
    summary = r"^  2 revisions, [1-9]\d* edits, \d+ label changes; final label (Informational|Process|Standards Track) "
    assert re.search(summary + r"\(p=0\.\d{3}\)", demo, re.MULTILINE), demo
    assert re.search(r"^\| atomic edits replayed +\| [1-9]\d* ", demo, re.MULTILINE), demo
    assert re.search(r"^\| ops saved \(median ratio / total ratio\) +\| \d+\.\dx / \d+\.\dx \|$", demo,
                     re.MULTILINE), demo
