"""Shape rules of the code that review asked for: long functions say why they are long."""

from __future__ import annotations

import ast
from pathlib import Path

import qbq

MAX_LINES = 50
ROOT = Path(qbq.__file__).parent


def _long_functions() -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef, list[str]]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                if node.end_lineno - node.lineno + 1 > MAX_LINES:
                    found.append((path, node, lines[node.lineno - 1 : node.end_lineno]))
    return found


def _says_why(node: ast.FunctionDef | ast.AsyncFunctionDef, body: list[str]) -> bool:
    # The comment sits before the first statement after the docstring, or just after it.
    statements = node.body[1:] if ast.get_docstring(node) else node.body
    first = statements[0].lineno - node.lineno if statements else len(body)
    return any(line.strip().startswith("# Long: ") for line in body[: first + 3])


def test_the_scan_finds_long_functions() -> None:
    names = {node.name for _, node, _ in _long_functions()}
    assert "plan_batches" in names  # the rule below checks something real


def test_every_long_function_says_why() -> None:
    silent = [
        f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"
        for path, node, body in _long_functions()
        if not _says_why(node, body)
    ]
    assert not silent, f"functions over {MAX_LINES} lines need a '# Long: why' comment: {silent}"
