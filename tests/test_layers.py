"""The layers' import rules, read from the source: models -> nothing of ppvae but models;
inference -> models and itself; imports at the top of every module, with ArviZ the one module
loaded on first use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> installed package, as pyproject.toml maps them.
LAYERS = {"models": "ppvae.models", "inference": "ppvae.inference"}
# The ppvae packages each layer may import (besides third-party packages).
ALLOWED = {"models": ("ppvae.models",), "inference": ("ppvae.inference", "ppvae.models")}
# The deliberate imports inside a function, loaded on first use so that ``import ppvae``
# stays light and changes no global state: ArviZ (inference/diagnostics.py, ``_arviz``),
# and the disentanglement scores with their scikit-learn and SciPy (the package's
# ``__getattr__``).
LAZY_IMPORTS = {
    ("inference/diagnostics.py", "_arviz", "arviz"),
    ("inference/__init__.py", "__getattr__", "ppvae.inference.disentanglement"),
}


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _imported(node: ast.Import | ast.ImportFrom, package: str, path: Path) -> list[str]:
    """Absolute names of the modules an import statement reads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the module's package
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        return [f"{base}.{node.module}" if node.module else base]
    return [node.module or ""]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("folder", list(LAYERS))
def test_layers_import_only_downwards(folder):
    bad = []
    for path in _modules(folder):
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, LAYERS[folder], path):
                if name != "ppvae" and not name.startswith("ppvae."):
                    continue
                if not name.startswith(ALLOWED[folder]):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "imports against the layering (app -> front -> inference -> models):\n" + (
        "\n".join(bad)
    )


def _function_imports(tree: ast.Module) -> list[tuple[str, ast.Import | ast.ImportFrom]]:
    """(enclosing function, import) for every import inside a function or method body."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, getattr(child, "name", "<lambda>"))
            elif isinstance(child, ast.Import | ast.ImportFrom):
                if function is not None:
                    found.append((function, child))
            else:
                visit(child, function)

    visit(tree, None)
    return found


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


@pytest.mark.parametrize("path", _modules("models") + _modules("inference"), ids=_id)
def test_imports_are_at_the_top_of_the_module(path):
    rel = str(path.relative_to(ROOT))
    tree = _tree(path)
    hidden = []
    for function, node in _function_imports(tree):
        names = _imported(node, "", path)
        if not all((rel, function, name) in LAZY_IMPORTS for name in names):
            hidden.append(f"line {node.lineno}: import of {names} inside {function}()")
    for node in ast.walk(tree):
        call = node.func if isinstance(node, ast.Call) else None
        if call is not None and ast.unparse(call) in ("importlib.import_module", "__import__"):
            hidden.append(f"line {node.lineno}: {ast.unparse(call)}()")
    seen_code = False
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            seen_code = True
        elif isinstance(stmt, ast.Import | ast.ImportFrom) and seen_code:
            hidden.append(f"line {stmt.lineno}: import below the module's definitions")
        elif _is_type_checking(stmt) and seen_code:
            hidden.append(f"line {stmt.lineno}: TYPE_CHECKING imports below the definitions")
    assert not hidden, f"{rel}: dependencies not readable at the top:\n" + "\n".join(hidden)


def test_the_lazy_arviz_import_is_where_the_rule_says():
    path = ROOT / "inference/diagnostics.py"
    imports = _function_imports(_tree(path))
    found = {(f, name) for f, node in imports for name in _imported(node, "", path)}
    assert found == {("_arviz", "arviz")}


def test_importing_ppvae_loads_neither_arviz_nor_the_app():
    code = (
        "import sys, ppvae, ppvae.inference, ppvae.models; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'arviz' "
        "or m.startswith('ppvae.app')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
