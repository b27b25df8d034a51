"""The package layout's rules, read from the source: imports go one way down the layers, no import
sits inside a function unless it is an optional extra's, and no engine function takes more than ten
parameters (a longer list is a dataclass config). docs/design.md draws the layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ocrquant"

#: lower imports nothing higher; equal ranks do not import each other
RANK = {
    "errors": 0,
    "fileio": 1, "onnx_shapes": 1, "onnx_qdq": 1,
    "data": 2,
    "metrics": 3,
    "tasks": 4,
    "frontends": 5,
    "runtime": 6,
    "zoo": 7,
    "evaluation": 8, "quantization": 8,
    "pipeline": 9, "analysis": 9,
    "tuning": 10, "report": 10,
    "workflow": 11, "api": 11,
    "cli": 12,
}  # fmt: skip

#: packages (and ocrquant modules importing them at module level) only some installs have
OPTIONAL = {"torch", "paddle", "paddle2onnx", "openvino", "ncnn", "pnnx", "ray", "tensorrt", "cuda"}
OPTIONAL_MODULES = {"ocrquant.quantization.torch_qdq", "ocrquant.frontends.craft_net"}

#: the user-facing entry points, where keyword options belong (everything below takes configs)
ENTRY_POINTS = {"cli", "api"}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, bool]]:
    """(import statement, inside a function?) for every import outside ``if TYPE_CHECKING``."""
    found: list[tuple[ast.stmt, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, local))
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _modules(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.ImportFrom):
        assert stmt.level == 0, "ocrquant imports are absolute"
        return [stmt.module or ""]
    return [alias.name for alias in stmt.names]


SOURCES = sorted(ROOT.rglob("*.py"))


def test_every_package_has_a_rank() -> None:
    assert {_package(p) for p in SOURCES} - {"__init__"} <= set(RANK)


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for path in SOURCES:
        src = _package(path)
        for stmt, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            for module in _modules(stmt):
                parts = module.split(".")
                if parts[0] != "ocrquant" or len(parts) < 2:
                    continue
                dst = parts[1]
                if dst != src and src in RANK and RANK[dst] >= RANK[src]:
                    wrong.append(f"{path.relative_to(ROOT)}:{stmt.lineno}: {src} imports {module}")
    assert not wrong, wrong


def test_function_local_imports_are_optional_extras_only() -> None:
    local = [
        f"{path.relative_to(ROOT)}:{stmt.lineno}: {module}"
        for path in SOURCES
        for stmt, inside in _imports(ast.parse(path.read_text(encoding="utf-8")))
        if inside
        for module in _modules(stmt)
        if module.split(".")[0] not in OPTIONAL and module not in OPTIONAL_MODULES
    ]
    assert not local, local


def test_engine_functions_take_at_most_ten_parameters() -> None:
    long = []
    for path in SOURCES:
        if _package(path) in ENTRY_POINTS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > 10:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count})")
    assert not long, long
