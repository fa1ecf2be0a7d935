"""The house rules, read from the code itself (ast, no imports run).

- Layers point down: data/ (floor 1) < diffusion/ and embeddings/ (floor 2, rooms that do not import each other)
  < interp/ (floor 3) < bench/ (floor 4). An import of a module on a higher floor, or of the other room on the
  same floor, fails — at module level, inside a function or under TYPE_CHECKING alike.
- No circle: the module-level imports between the project's files form no cycle.
- A function-level import names a third-party module (torch, diffusers, matplotlib: imported when used, because
  importing them costs seconds); the project's own modules are imported at the top, where the reader sees them.
- No source file is over MAX_LINES lines, except the tables listed in LONG_TABLES.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLOORS = {"data": 1, "diffusion": 2, "embeddings": 2, "interp": 3, "bench": 4}
MAX_LINES = 500
# Files that are mostly data (phrase tables, preset tables), not logic: named here with the reason.
LONG_TABLES = {
    "data/prompts/offline_annotator.py": "the offline annotator's phrase tables",
}


def project_files():
    for room in FLOORS:
        yield from sorted((REPO / room).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """(imported module, line, at module level?) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    # An `if TYPE_CHECKING:` block at the top counts as module level (it is read with the module).
    for node in tree.body:
        if isinstance(node, ast.If):
            top_level |= {id(child) for child in node.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                # `from interp import statistics` imports the module interp.statistics.
                yield f"{node.module}.{alias.name}", node.lineno, id(node) in top_level


def first_party(module: str) -> str | None:
    root = module.split(".")[0]
    return root if root in FLOORS else None


def resolve(module: str) -> str | None:
    """The project module a dotted import name refers to (a file or a package), or None."""
    parts = module.split(".")
    while parts:
        candidate = REPO.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts = parts[:-1]
    return None


def test_layers_point_down_and_rooms_on_one_floor_stay_apart():
    wrong = []
    for path in project_files():
        room = path.relative_to(REPO).parts[0]
        for module, line, _ in imports(path):
            target = first_party(module)
            if target is None or target == room:
                continue
            if FLOORS[target] >= FLOORS[room]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module} (floor {FLOORS[target]} from "
                             f"floor {FLOORS[room]})")
    assert not wrong, "\n".join(wrong)


def test_no_function_level_import_of_the_project():
    late = [f"{path.relative_to(REPO)}:{line} imports {module} inside a function"
            for path in project_files() for module, line, top in imports(path)
            if not top and first_party(module) is not None]
    assert not late, "\n".join(late)


def test_no_import_circle():
    graph = {}
    for path in project_files():
        graph[module_name(path)] = {resolve(module) for module, _, top in imports(path)
                                    if top and first_party(module)} - {None, module_name(path)}
    # A package's __init__ is imported with every module inside it: an arrow to a.b.c runs through a and a.b.
    for node in list(graph):
        graph[node] = {target for target in graph[node] if target in graph}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_source_file_is_too_long():
    long = [f"{path.relative_to(REPO)}: {count} lines" for path in project_files()
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
            and path.relative_to(REPO).as_posix() not in LONG_TABLES]
    assert not long, "\n".join(long)
