"""The package stands on its own: nothing under petl/ imports a top-level script (run_glue.py,
run_glue_hyper_search.py), so sweeps and searches work from any folder; and the project's modules
import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("petl", "argument_classes")
SCRIPTS = ("run_glue", "run_glue_hyper_search")


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """{dotted module name: file} for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path, module: str, in_functions: bool) -> list[str]:
    """Every module name `path` imports (`from a import b` gives both `a` and `a.b`; relative imports
    resolved). `in_functions`: also the imports deferred into function bodies. Imports under
    `if TYPE_CHECKING:` never run and are left out."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(ast.Module(body=child.orelse, type_ignores=[]), in_function)
                continue
            deferred = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and (in_functions or not deferred):
                names.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and (in_functions or not deferred):
                base = child.module or ""
                if child.level:
                    anchor = package[: len(package) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                names.append(base)
                names.extend(f"{base}.{alias.name}" for alias in child.names)
            visit(child, deferred)

    visit(ast.parse(path.read_text(), str(path)), False)
    return names


def import_graph(root: Path = REPO, in_functions: bool = True) -> dict[str, set[str]]:
    """module -> the project modules importing it runs. Importing `a.b.c` first runs the packages `a`
    and `a.b` (their __init__), except for a module inside them, for which they are already running."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module, in_functions):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in modules and target != module and not module.startswith(target + "."):
                    targets.add(target)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_no_module_under_petl_imports_a_top_level_script():
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for module, path in project_modules().items()
        if module.split(".")[0] == "petl"
        for name in imported_names(path, module, in_functions=True)
        if name.split(".")[0] in SCRIPTS
    ]
    assert not offenders, offenders


def test_petl_imports_argument_classes_only_at_call_time():
    """argument_classes imports petl (errors, registry, ...); petl's pipeline reaches the argument
    classes only inside its functions, so importing any petl module never runs argument_classes."""
    offenders = [
        f"{path.relative_to(REPO)} imports {name} at module level"
        for module, path in project_modules().items()
        if module.split(".")[0] == "petl"
        for name in imported_names(path, module, in_functions=False)
        if name.split(".")[0] == "argument_classes"
    ]
    assert not offenders, offenders


def test_project_modules_import_each_other_without_cycles():
    """Deferred imports (inside functions) count: a cycle hidden in one is still a cycle of the design
    (petl.core -> petl.methods -> petl.methods.full -> petl.core was one)."""
    assert find_cycle(import_graph(in_functions=False)) is None
    cycle = find_cycle(import_graph(in_functions=True))
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles(tmp_path):
    """The checks above are only as good as the graph: a planted cycle through a deferred import and a
    package __init__, and a planted script import, are found."""
    (tmp_path / "petl" / "sub").mkdir(parents=True)
    (tmp_path / "argument_classes").mkdir()
    (tmp_path / "petl" / "__init__.py").write_text("from petl.a import f\n")
    (tmp_path / "petl" / "a.py").write_text("from .sub import g\n\ndef f():\n    return g\n")
    (tmp_path / "petl" / "sub" / "__init__.py").write_text("def g():\n    from petl.a import f\n    import run_glue\n")
    (tmp_path / "argument_classes" / "__init__.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import petl\n")
    assert find_cycle(import_graph(tmp_path, in_functions=False)) is None
    assert find_cycle(import_graph(tmp_path, in_functions=True)) == ["petl.a", "petl.sub", "petl.a"]
    assert "run_glue" in imported_names(tmp_path / "petl" / "sub" / "__init__.py", "petl.sub", in_functions=True)
    assert import_graph(tmp_path)["argument_classes"] == set()  # TYPE_CHECKING imports never run
