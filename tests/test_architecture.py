"""The package's one-way arrows (GUIDE section 2, README "Architecture"), read from the source.

``node.convert`` and ``node.net`` never import each other, ``node.service`` or ``node.cli``;
nothing imports ``node.cli`` but the ``python -m node`` entry point. Imports inside functions
count too: a lazy import is still an arrow. The read-only console commands start without
pydicom, pynetdicom or nibabel.
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
}


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
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


def test_no_import_goes_against_the_arrows():
    assert violations() == []


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
