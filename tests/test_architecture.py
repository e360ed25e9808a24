"""The layout: the course's four modules in front, the ``coco`` package behind them, imports flowing one way.

What is checked, on the code as it is (import statements read with ``ast``, so an import inside a function counts
as much as one at the top, and a relative import as much as an absolute one):

* the top level holds only the course's modules, and the package never imports them back;
* no import cycle among all of them;
* the configuration imports nothing of the package (everything may import it);
* ``python -m metrics`` starts without torch;
* no module over 700 lines, no function over 100 lines.
"""
import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_env

import loops

COURSE_MODULES = {"dataset", "models", "metrics", "loops"}
PACKAGE = "coco"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 700, 100


def _modules() -> dict[str, Path]:
    """Every module of the house by dotted name: the top-level ones and the package's."""
    found = {path.stem: path for path in ROOT.glob("*.py")}
    found.update({f"{PACKAGE}.{path.stem}": path for path in (ROOT / PACKAGE).glob("*.py") if path.stem != "__init__"})
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The house's modules that ``path`` (module ``name``) imports anywhere in it, functions included."""
    package = name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from .x import y, relative to the importing module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".strip(".")
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in known:
                found.add(candidate)
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


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


def test_the_top_level_holds_the_course_modules_and_the_package_never_imports_them():
    assert {path.stem for path in ROOT.glob("*.py")} == COURSE_MODULES
    graph = _graph()
    upward = {name: sorted(targets & COURSE_MODULES) for name, targets in graph.items()
              if name.startswith(PACKAGE + ".") and targets & COURSE_MODULES}
    assert not upward, f"package modules importing the course's modules: {upward}"


def test_no_import_cycle_lazy_and_relative_imports_included():
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself works


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "fit.py"
    source.write_text("def f():\n    from . import config\n    from .engine import evaluate\n    import coco.costs\n")
    known = {"coco.config", "coco.engine", "coco.costs", "coco.fit"}
    assert _imports(source, "coco.fit", known) == {"coco.config", "coco.engine", "coco.costs"}


def test_the_configuration_imports_nothing_of_the_package():
    graph = _graph()
    for ground in ("coco.config", "coco.atomic"):
        assert graph[ground] == set(), f"{ground} imports {sorted(graph[ground])}"


def test_metrics_command_line_starts_without_torch():
    code = "import sys, metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env()).returncode == 0


def test_no_module_over_700_lines_and_no_function_over_100():
    too_long, long_functions = {}, {}
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions[f"{name}.{node.name}"] = length
    assert not too_long, too_long
    assert not long_functions, long_functions


def test_loops_holds_the_course_functions_and_offers_the_public_names():
    assert loops.train_loop.__module__ == "loops" and loops.validation_loop.__module__ == "loops"
    for name in ("train_loop", "validation_loop", "update_graphs", "Config", "PRESETS", "PRESET_DESCRIPTIONS",
                 "config_from_preset", "fit", "predict_run", "load_run", "train_one_epoch", "evaluate", "predict",
                 "build_net", "build_optimizer", "make_scheduler", "main"):
        assert callable(getattr(loops, name)) or isinstance(getattr(loops, name), dict), name
    assert set(loops.__all__) <= set(dir(loops))
