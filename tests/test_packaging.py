"""What ships: the wheel of `pip install .` holds the daemon alone (`watcher` and `chains`), neither package
imports the checkout's demo and test tooling (`devnet`), and `deposit-watcher receiver` works without it.
"""

from __future__ import annotations

import ast
import itertools
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("watcher", "chains")
TOOLING = "devnet"
# The merchant API's OpenAPI document, which the daemon serves, and the pages' templates and static files.
PACKAGE_DATA = sorted(
    ["watcher/api/openapi.yaml"]
    + [
        path.relative_to(ROOT).as_posix()
        for folder in ("templates", "static")
        for path in (ROOT / "watcher" / "ui" / folder).rglob("*")
        if path.is_file()  # the back office's templates are in templates/office/
    ]
)
# Calls that import the module named by their first argument.
IMPORT_CALLS = frozenset({"__import__", "import_module", "run_module"})
# Not copied for the build: what a checkout gathers besides its sources.
BUILD_IGNORES = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    "devnet-data", ".check-install",
)  # fmt: skip


# ------------------------------------------------------------------------------------ no devnet imports


def _is_tooling(name: str) -> bool:
    return name == TOOLING or name.startswith(TOOLING + ".")


def _absolute(package: str, node: ast.ImportFrom) -> str | None:
    """The module an ImportFrom in `package` names, relative levels resolved; None above the top level
    (that is an ImportError, not an import)."""
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    if not parts:
        return None
    return ".".join([*parts, node.module] if node.module else parts)


def _imported(package: str, node: ast.AST) -> list[str]:
    """The modules `node` imports, or may import, when it is any form of import; [] otherwise."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _absolute(package, node)
        if base is None:
            return []
        return [base, *(f"{base}.{alias.name}" if base else alias.name for alias in node.names)]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in IMPORT_CALLS and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    if isinstance(node, ast.List | ast.Tuple):  # a command line such as [python, "-m", "devnet"]
        values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
        return [str(v) for flag, v in itertools.pairwise(values) if flag == "-m"]
    return []


def tooling_imports(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of each import of devnet in `source`, a module of `package` (e.g. "chains.evm")."""
    found = []
    for node in ast.walk(ast.parse(source)):
        found += [
            (getattr(node, "lineno", 0), name) for name in _imported(package, node) if _is_tooling(name)
        ]
    return found


def test_the_shipped_packages_never_import_devnet() -> None:
    files = [path for package in SHIPPED for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20 and not (ROOT / "watcher" / "devnet").exists()
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for line, name in tooling_imports(path.read_text(), ".".join(path.relative_to(ROOT).parent.parts))
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("import devnet", "watcher", ["devnet"]),
        ("import os, devnet.demo as demo", "watcher", ["devnet.demo"]),
        ("from devnet import receiver", "watcher", ["devnet", "devnet.receiver"]),
        ("from devnet.receiver import Receiver", "chains", ["devnet.receiver", "devnet.receiver.Receiver"]),
        ("def f():\n    from devnet.demo import main\n", "watcher", ["devnet.demo", "devnet.demo.main"]),
        ("import importlib\nimportlib.import_module('devnet.demo')", "watcher", ["devnet.demo"]),
        ("from importlib import import_module\nimport_module('devnet')", "watcher", ["devnet"]),
        ("__import__('devnet.anvil')", "chains", ["devnet.anvil"]),
        ("import runpy\nrunpy.run_module('devnet')", "watcher", ["devnet"]),
        ("cmd = [sys.executable, '-m', 'devnet.receiver']", "watcher", ["devnet.receiver"]),
        ("from . import devnet", "watcher", []),  # watcher.devnet, not the top-level package
        ("from .. import devnet", "chains.evm", []),  # chains.devnet
        ("from ... import devnet", "chains.evm", []),  # above the top level: an ImportError
        ("import devnetwork, watcher.devnet\nsecret = 'devnet-secret'", "watcher", []),
        ("from watcher import receiver\n[sys.executable, '-m', 'watcher']", "watcher", []),
    ],
)
def test_every_import_form_is_found(source: str, package: str, expected: list[str]) -> None:
    assert [name for _, name in tooling_imports(source, package)] == expected


# ------------------------------------------------------------------------------------ the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` installs, built from a copy of the checkout (a build writes build/ and
    *.egg-info next to the sources; the checkout stays as it is)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=BUILD_IGNORES)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "out"), str(source)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (tmp / "out").glob("deposit_watcher-*.whl")
    return built


def test_the_wheel_holds_watcher_and_chains_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    dist_info = {top for top in tops if top.endswith(".dist-info")}
    assert tops - dist_info == set(SHIPPED) and len(dist_info) == 1
    assert [name for name in names if TOOLING in name.lower()] == []
    sources = [name for name in names if not name.startswith(tuple(dist_info))]
    # No .sol or .json data; only the OpenAPI document and the pages' files, which the daemon serves.
    assert sorted(name for name in sources if not name.endswith(".py")) == PACKAGE_DATA
    in_tree = {
        path.relative_to(ROOT).as_posix() for package in SHIPPED for path in (ROOT / package).rglob("*.py")
    }
    assert set(sources) == in_tree | set(PACKAGE_DATA)  # and every module of both packages is in it
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "deposit-watcher = watcher.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_receiver_command_runs_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    # A pure wheel unpacked is what `pip install` puts in site-packages (its dependencies come from
    # this venv). Run from an empty directory: neither the checkout nor devnet is on the path.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import importlib.util, sys, watcher\n"
        f"assert watcher.__file__.startswith({str(site)!r}), watcher.__file__\n"
        f"assert importlib.util.find_spec({TOOLING!r}) is None\n"
        "from watcher.cli import main\n"
        "sys.exit(main(['receiver', '--listen', '127.0.0.1:0', '--key', 'k', '--secret', 's']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    receiver = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        first = receiver.stdout.readline()
        assert first.startswith("listening on http://127.0.0.1:") and "/callbacks" in first, first
        receiver.send_signal(signal.SIGTERM)
        rest, _ = receiver.communicate(timeout=30)
    finally:
        receiver.kill()  # nothing once it has exited
        receiver.wait()
    assert receiver.returncode == 0, first + rest
