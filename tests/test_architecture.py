"""The package's one-way arrows (GUIDE section 2, README "Architecture"), read from the source.

``node.convert`` and ``node.net`` never import each other, ``node.service`` or ``node.cli``;
nothing imports ``node.cli`` but the ``python -m node`` entry point; ``node.cli`` reaches
the network and the converter only through ``node.service``. No two modules import each other,
directly or around a loop. Imports inside functions count too: a lazy import is still an
arrow. The read-only console commands start without pydicom, pynetdicom or nibabel.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "node"

FORBIDDEN = {
    "node.convert": ("node.net", "node.service", "node.cli", "node.web"),
    "node.net": ("node.convert", "node.service", "node.cli", "node.web"),
    "node.service": ("node.cli", "node.web"),
    "node.web": ("node.cli",),  # the console calls the same operations as the CLI
    "node.cli": ("node.net", "node.convert"),  # parse, call node.service, render
}


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import statements under ``if TYPE_CHECKING:`` (for annotations; they never run)."""
    return {node for block in ast.walk(tree) if isinstance(block, ast.If)
            and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for statement in block.body for node in ast.walk(statement)}


def imports_of(path: Path, root: Path = PACKAGE, runtime: bool = False) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative ones
    resolved); with ``runtime``, not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_only(tree) if runtime else set()
    here = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        rules = [bad for owner, bad in FORBIDDEN.items() if _within(module, owner)]
        for name in sorted(imports_of(path, root)):
            for bad in (b for group in rules for b in group):
                if _within(name, bad):
                    out.append(f"{module} imports {name}")
            if _within(name, "node.cli") and not _within(module, "node.cli") and (
                module != "node.__main__"
            ):
                out.append(f"{module} imports {name} (nothing imports the console)")
    return sorted(set(out))


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports when it runs,
    lazily or not (a name imported from a module counts as that module; a submodule imported
    from a package, as the submodule). Imports for annotations only (``if TYPE_CHECKING:``)
    are not part of it: they never run."""
    modules = {_module_name(path, root): path for path in root.rglob("*.py")}
    return {name: {m for m in imports_of(path, root, runtime=True) if m in modules and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: every group of modules that reach each other (Tarjan's strongly
    connected components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_goes_against_the_arrows():
    assert violations() == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_check_catches_a_loop_through_a_lazy_import(tmp_path):
    """The check itself can fail: the CLI's parser and commands importing each other (as
    they once did), and a loop of three modules closed by an import inside a function."""
    fake = tmp_path / "node"
    (fake / "cli").mkdir(parents=True)
    (fake / "service").mkdir()
    (fake / "cli" / "app.py").write_text("def main():\n    from node.cli.parser import p\n")
    (fake / "cli" / "parser.py").write_text("from node.cli.app import cmd\n")
    (fake / "service" / "a.py").write_text("from node.service import b\n")
    (fake / "service" / "b.py").write_text("import node.service.c\n")
    (fake / "service" / "c.py").write_text("def f():\n    from node.service.a import x\n")
    (fake / "service" / "d.py").write_text("from node.service import a\n")  # not in a loop
    (fake / "service" / "e.py").write_text(  # an annotation's import closes no loop
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from node.service import d\n")
    (fake / "service" / "d.py").write_text("from node.service import a, e\n")
    assert cycles(import_graph(fake)) == [
        ["node.cli.app", "node.cli.parser"],
        ["node.service.a", "node.service.b", "node.service.c"]]


def test_the_contract_check_catches_the_cli_reaching_past_the_service(tmp_path):
    """The check itself can fail: a command that opens an association or reads a NIfTI
    itself instead of calling node.service."""
    fake = tmp_path / "node"
    (fake / "cli").mkdir(parents=True)
    (fake / "cli" / "app.py").write_text(
        "def cmd_echo():\n    from node.net.scu import echo\n"
        "def cmd_convert():\n    from node.convert import series\n"
        "def cmd_status():\n    from node.service.operations.reports import status_report\n")
    assert violations(fake) == ["node.cli.app imports node.convert",
                                "node.cli.app imports node.convert.series",
                                "node.cli.app imports node.net.scu",
                                "node.cli.app imports node.net.scu.echo"]


def test_the_contract_check_catches_a_forbidden_import(tmp_path):
    """The check itself can fail: a converter module that imports the network layer lazily."""
    fake = tmp_path / "node"
    (fake / "convert").mkdir(parents=True)
    (fake / "net").mkdir()
    (fake / "convert" / "bad.py").write_text(
        "def f():\n    from node.net.scu import store\n    return store\n")
    (fake / "net" / "worse.py").write_text("from ..convert import series\n")
    (fake / "net" / "fine.py").write_text("from node.errors import InputError\n")
    found = violations(fake)
    assert "node.convert.bad imports node.net.scu" in found
    assert "node.net.worse imports node.convert.series" in found
    assert not any(v.startswith("node.net.fine") for v in found)


@pytest.mark.parametrize("argv", [["status"], ["jobs"], ["quarantine", "list"],
                                  ["status", "--json"]])
def test_read_only_commands_load_no_dicom_or_nifti_library(tmp_path, argv):
    from node.service.journal import Journal

    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n')
    Journal(tmp_path / "var" / "journal.sqlite").close()
    probe = (
        "import sys, json, contextlib, io\n"
        "from node.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = main({[*argv, '--config', str(config)]!r})\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pydicom', 'pynetdicom', 'nibabel', 'numpy'})\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "heavy": []}


def test_every_setting_is_in_the_readme_reference():
    """Settings are written once, in node/service/settings.py; the README's reference tables
    must name each of them (this fails when a key is added without its documentation)."""
    from dataclasses import fields

    from node.service.settings import ConsoleSettings, NodeSettings, WatchSettings

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    tables = (NodeSettings, WatchSettings, ConsoleSettings)
    missing = [f.name for cls in tables for f in fields(cls) if f"`{f.name}`" not in readme]
    assert missing == []
    assert all(f.metadata.get("help") for cls in tables for f in fields(cls))


def long_functions(paths: list[Path], limit: int = 60) -> list[str]:
    """Functions (methods, nested ones) longer than ``limit`` lines, as "file:line name"."""
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    out.append(f"{path.relative_to(path.parents[2])}:{node.lineno} "
                               f"{node.name} ({length} lines)")
    return out


def test_no_long_function_in_the_service_or_the_series_conversion():
    """A function a newcomer must hold in their head at once stays under 60 lines where the
    logic is densest: the service (journal, delivery, node, operations) and the series
    conversion."""
    paths = sorted((PACKAGE / "service").rglob("*.py")) + sorted(
        (PACKAGE / "convert").glob("series*.py"))
    assert long_functions(paths) == []


def test_the_length_check_can_fail(tmp_path):
    folder = tmp_path / "node" / "service"
    folder.mkdir(parents=True)
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (folder / "long.py").write_text(f"def long():\n{body}\n\ndef short():\n    pass\n")
    assert long_functions([folder / "long.py"]) == ["node/service/long.py:1 long (61 lines)"]


def test_no_test_module_imports_another():
    """Shared helpers and fixtures live in tests/support/ and conftest.py (README "Tests")."""
    tests = Path(__file__).resolve().parent
    offenders = [f"{path.name} imports {name}" for path in sorted(tests.glob("test_*.py"))
                 for name in imports_of(path, tests) if name.split(".")[0].startswith("test_")]
    assert offenders == []
