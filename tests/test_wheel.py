"""An installed wheel (not only an editable install of this checkout) carries and finds the shipped models."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import SAMPLE

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_shipped_models_and_encodes_with_them(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip("pyproject.toml builds with setuptools >= 68")
    src = tmp_path / "src"                     # build from a copy: nothing is written into the checkout
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("aecompress", "gui", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("aecompress-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"aecompress/_models/{p.relative_to(ROOT / 'models').as_posix()}"
               for p in (ROOT / "models").rglob("*") if p.is_file()}
    assert shipped and shipped <= names
    assert not any(n.startswith("models/") for n in names)   # no top-level "models" in site-packages

    site = tmp_path / "site"                   # a wheel is a zip: unpacked, it is what pip installs
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("AECOMPRESS_MODELS", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "aecompress", *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path, env=env, timeout=120)
    where = subprocess.run([sys.executable, "-c", "import aecompress; print(aecompress.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert Path(where.strip()).is_relative_to(site)          # the unpacked wheel, not this checkout
    models = {m["name"]: m for m in json.loads(run("models", "--json").stdout)}
    assert {"photo", "denoise"} <= set(models)
    assert all(Path(m["path"]).is_relative_to(site / "aecompress" / "_models") for m in models.values())
    shutil.copy(SAMPLE, tmp_path / "cat.png")
    r = run("encode", "cat.png", "-q", "60")
    assert r.returncode == 0, r.stderr
    r = run("decode", "cat.aez", "-o", "back.png")
    assert r.returncode == 0 and (tmp_path / "back.png").stat().st_size > 0, r.stderr

    # the console scripts the wheel declares resolve to functions that run
    (eps,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = dict(line.replace(" ", "").split("=", 1)
                   for line in zipfile.ZipFile(wheel).read(eps).decode().split("[console_scripts]")[1]
                   .split("[")[0].splitlines() if "=" in line)
    assert set(scripts) >= {"aecompress", "aecompress-gui"}
    module, func = scripts["aecompress"].split(":")
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.argv = ['aecompress', 'models']; "
                        f"from {module} import {func}; {func}()"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert r.returncode == 0 and "photo" in r.stdout, r.stderr
