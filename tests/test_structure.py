"""The code's shape: layers import downwards only, every declared dependency is used, the top level is fixed."""
import ast
import importlib.metadata
import re
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

from conftest import REPO

PACKAGES = ("vjepa", "data", "launch")
# fixed by the user: nothing else belongs at the top of the repository
TOP_LEVEL = {"pyproject.toml", "README.md", "vjepa", "data", "launch", "configs", "tests", "docs", ".ci", ".gitignore"}


def our_modules() -> dict[str, object]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(path) -> set[str]:
    """Every absolute import in a file, at any depth (lazy imports inside functions count: they cycle too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()

    def owner(name):  # the module a dotted name lives in (a function's name resolves to its module)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, path in modules.items():
        deps = {owner(n) for n in imported_names(path)} - {"", mod}
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}  # a module's own packages run first anyway
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "launch.slurm" in graph and "vjepa.interop.keys" in graph  # the walk found the modules
    assert cycles(graph) == [], "modules that import each other (the lower layer must not import the upper)"


def test_cycle_finder_finds_a_lazy_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_declared_dependency_is_imported():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    dists = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    used = {n.split(".")[0] for path in our_modules().values() for n in imported_names(path)}
    # torch.utils.tensorboard needs the tensorboard package without importing it by name
    used |= {"tensorboard"} if any("torch.utils.tensorboard" in imported_names(p) for p in our_modules().values()) \
        else set()
    provides = importlib.metadata.packages_distributions()  # import name -> distributions
    used_dists = {d.lower().replace("_", "-") for name in used for d in provides.get(name, [])} | used
    assert sorted(dists - used_dists) == [], "declared in pyproject.toml but never imported: drop them or use them"


def test_top_level_is_the_fixed_layout():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    tracked_deleted = subprocess.run(["git", "ls-files", "--deleted"], cwd=REPO, capture_output=True, text=True,
                                     check=True).stdout.split()
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.split()
    top = {f.split("/")[0] for f in set(files) - set(tracked_deleted) | set(untracked)}
    assert top <= TOP_LEVEL, f"not part of the fixed top level: {sorted(top - TOP_LEVEL)}"
