"""Code layout invariants: scripts stay thin, the library has no import circle, modules stay readable."""

import ast

import pytest

from tests.conftest import REPO

RECIPE = REPO / "recipes" / "KD-Noise"
SCRIPTS = sorted(RECIPE.glob("*.py"))
LIBRARY = sorted((REPO / "kd_brain").rglob("*.py"))


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Every module an import statement of ``path`` names (module level or inside functions)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # "from pkg import module"
    return names


def import_cycles(graph):
    """The cycles of a ``{module: {modules it imports}}`` graph (each as a list, first module repeated last).

    >>> import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    [['a', 'b', 'c', 'a']]
    >>> import_cycles({"a": {"b"}, "b": set()})
    []
    """
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def library_graph():
    modules = {module_name(p): p for p in LIBRARY}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_cycle_finder_finds_a_circle():
    graph = library_graph()
    name = next(n for n in sorted(graph) if graph[n])
    back = {**graph, sorted(graph[name])[0]: graph[sorted(graph[name])[0]] | {name}}
    assert import_cycles(back), "a planted circle must be found"


def test_library_has_no_import_circle():
    assert import_cycles(library_graph()) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_import_no_other_script(script):
    """Recipe scripts are command lines over kd_brain: shared code lives in the library, never in a script."""
    others = {s.stem for s in SCRIPTS} - {script.stem}
    assert not (imports(script) & others), f"{script.name} imports another script: {imports(script) & others}"


def test_library_imports_no_script():
    for path in LIBRARY:
        assert not ({s.stem for s in SCRIPTS} & imports(path)), f"{path} imports a recipe script"


def test_every_subpackage_says_what_it_holds():
    for init in (REPO / "kd_brain").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.strip(), f"{init.relative_to(REPO)} has no docstring"


def test_modules_stay_short():
    """One concept per module: none much over 400 lines."""
    long = {str(p.relative_to(REPO)): n for p in LIBRARY + SCRIPTS if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
