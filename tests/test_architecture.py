"""The layout: the project's modules import each other in one direction only, and ``loops`` still offers every
name that the course and earlier versions of this project offered."""
import ast
from pathlib import Path

import loops
from conftest import ROOT

MODULES = sorted(path.stem for path in ROOT.glob("*.py"))


def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path``, function bodies included (a lazy import is still an edge)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return stack[stack.index(other):] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        state[module] = "done"
        stack.pop()
        return None

    for module in graph:
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_no_module_imports_itself_back():
    graph = {module: _imports(ROOT / f"{module}.py") - {module} for module in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself works
    # the bottom of the graph stays light: metrics must start without torch (python -m metrics)
    assert _imports(ROOT / "metrics.py") <= {"files", "dataset"} and _imports(ROOT / "files.py") == set()


def test_loops_offers_the_course_functions_and_the_public_names():
    for name in ("train_loop", "validation_loop", "update_graphs", "Config", "PRESETS", "PRESET_DESCRIPTIONS",
                 "config_from_preset", "fit", "predict_run", "load_run", "train_one_epoch", "evaluate", "predict",
                 "build_net", "main"):
        assert callable(getattr(loops, name)) or isinstance(getattr(loops, name), dict), name
    assert set(loops.__all__) <= set(dir(loops))
