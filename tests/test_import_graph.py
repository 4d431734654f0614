"""The layers hold: the project's import graph has no circles, and imports sit at module top.

The graph covers the four packages (rl_trading, envs, policies, tuning) and counts every
import, function-level ones included (a hidden circle is still a circle). A function-level
import is allowed only for a heavy optional dependency, with a comment saying which: a
third-party package, or a project module whose own top-level imports load one of the heavy
packages below (so `rl-trading --help` and one-line input errors stay cheap). Pure static
analysis with `ast`: nothing is imported.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl_trading", "envs", "policies", "tuning")
# third-party packages heavy enough (seconds to import, or optional) that a project module
# loading one at import time may itself be imported lazily
HEAVY = frozenset(
    {
        "ray",
        "torch",
        "mlflow",
        "sklearn",
        "matplotlib",
        "onnx",
        "onnxruntime",
        "optuna",
        "sqlalchemy",
        "numba",
    }
    | {"stable_baselines3", "IPython", "nbformat", "nbclient"}
)
# project modules heavy at import for a reason the import statements do not show
HEAVY_MODULES = {"envs.engine": "numba"}  # jit-compiles its kernels when imported
# the package users import (`rl_trading.load_policy`, `rl_trading.DistributedTrainer`): its
# names load on first access (PEP 562) so that `import rl_trading.<anything>` stays light;
# nothing in the project imports them from it (the cycle check holds it to that)
FACADES = frozenset({"rl_trading"})


@dataclass
class Imp:
    """One import statement: where it is, what project modules it reaches, how deep."""

    line: int
    targets: set[str]  # the project modules it names
    third_party: str | None  # top-level package name of a non-project import
    in_function: bool
    top_level: bool  # executed when the module is imported (not TYPE_CHECKING, not in a def)
    commented: bool
    packages: set[str] = field(default_factory=set)  # packages whose __init__ runs first


@dataclass
class Module:
    name: str
    path: Path
    imports: list[Imp] = field(default_factory=list)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def _walk(body: list[ast.stmt], in_function: bool, live: bool) -> Iterator[tuple]:
    """(import node, in a function?, runs at import time?) for every import in `body`."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function, live and not in_function
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(node.body, True, live)
            continue
        type_checking = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for name in ("body", "orelse", "finalbody", "handlers"):
            sub = getattr(node, name, None)
            if isinstance(sub, list) and sub and isinstance(sub[0], ast.AST):
                if name == "handlers":
                    for h in sub:
                        yield from _walk(h.body, in_function, live)
                else:
                    on = live and not (type_checking and name == "body")
                    yield from _walk(sub, in_function, on)


def _resolve(node: ast.Import | ast.ImportFrom, me: str, is_pkg: bool, mods: dict) -> list[str]:
    """Project modules an import statement binds (`from pkg import sub` -> pkg.sub)."""

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        return [m for a in node.names if (m := known(a.name))]
    base = node.module or ""
    if node.level:
        parts = me.split(".") if is_pkg else me.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        m = sub if sub in mods else known(base)
        if m:
            out.append(m)
    return out


def _packages_run(targets: set[str], me: str, mods: dict) -> set[str]:
    """The packages whose `__init__` importing `targets` runs first (not `me`'s own, which are
    already running): `import a.b.c` executes `a/b/__init__.py`, a real edge of the graph."""
    mine = {me.rsplit(".", i)[0] for i in range(me.count(".") + 1)}
    out = set()
    for t in targets:
        parts = t.split(".")
        for i in range(1, len(parts)):
            pkg = ".".join(parts[:i])
            if pkg in mods and pkg not in mine:
                out.add(pkg)
    return out


@functools.cache
def build() -> dict[str, Module]:
    """Every project module with its imports (parsed once per test session; read only)."""
    paths = _modules()
    mods: dict[str, Module] = {}
    for name, path in paths.items():
        src = path.read_text()
        lines = src.splitlines()
        mod = mods[name] = Module(name, path)
        for node, in_fn, live in _walk(ast.parse(src).body, False, True):
            targets = set(_resolve(node, name, path.name == "__init__.py", paths)) - {name}
            first = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            third = None
            if not targets and not (isinstance(node, ast.ImportFrom) and node.level):
                third = (first or "").split(".")[0]
            here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
            commented = "#" in here or above.strip().startswith("#")
            runs = _packages_run(targets, name, paths)
            mod.imports.append(Imp(node.lineno, targets, third, in_fn, live, commented, runs))
    return mods


def graph_of(mods: dict[str, Module]) -> dict[str, set[str]]:
    """module -> the modules importing it runs: those it names, plus what the `__init__` of
    each package on the way imports at its top level (`import a.b.c` runs `a/b/__init__.py`;
    a package's lazy `__getattr__` exports run later, on use, so they are edges of the
    package only)."""
    graph = {m.name: set().union(*(i.targets for i in m.imports)) for m in mods.values()}
    top = {
        m.name: set().union(set(), *(i.targets for i in m.imports if i.top_level))
        for m in mods.values()
    }
    for m in mods.values():
        for i in m.imports:
            for pkg in i.packages:
                graph[m.name] |= top[pkg] - {m.name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (as a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def heavy_at_import(mods: dict[str, Module]) -> dict[str, set[str]]:
    """The heavy third-party packages each module loads when it is imported."""
    memo: dict[str, set[str]] = {}

    def of(name: str, seen: frozenset[str]) -> set[str]:
        if name in memo:
            return memo[name]
        out: set[str] = {HEAVY_MODULES[name]} if name in HEAVY_MODULES else set()
        for imp in mods[name].imports:
            if not imp.top_level:
                continue
            if imp.third_party in HEAVY:
                out.add(imp.third_party)
            for t in imp.targets - seen:
                out |= of(t, seen | {name})
        memo[name] = out
        return out

    return {name: of(name, frozenset()) for name in mods}


def test_the_checks_can_fail() -> None:
    """The cycle finder names a circle; the pending list names modules that exist."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    mods = build()
    assert not FACADES - set(mods)
    assert "ray" in heavy_at_import(mods)["rl_trading.training.runner"]  # heavy, so lazy in cli
    assert not heavy_at_import(mods)["rl_trading.config"]  # a base module stays light


def test_no_import_cycles() -> None:
    mods = build()
    graph = graph_of(mods)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_function_level_imports_only_for_heavy_dependencies() -> None:
    mods = build()
    heavy = heavy_at_import(mods)
    bad = []
    for m in mods.values():
        where = m.path.relative_to(ROOT)
        for imp in m.imports:
            if not imp.in_function:
                continue
            if imp.third_party is not None:
                if imp.third_party in sys.stdlib_module_names:
                    bad.append(f"{where}:{imp.line}: standard library import inside a function")
                elif not imp.commented:
                    bad.append(f"{where}:{imp.line}: lazy {imp.third_party} import needs a comment")
                continue
            if m.name in FACADES and imp.commented:
                continue
            light = sorted(t for t in imp.targets if not heavy[t])
            if light:
                bad.append(f"{where}:{imp.line}: project import inside a function: {light}")
            elif not imp.commented:
                bad.append(f"{where}:{imp.line}: lazy heavy project import needs a comment")
    assert not bad, f"{len(bad)} misplaced imports:\n" + "\n".join(bad)


if __name__ == "__main__":  # a listing for whoever moves imports
    m = build()
    h = heavy_at_import(m)
    n = sum(i.in_function for x in m.values() for i in x.imports)
    print("function-level imports:", n)
    print("cycle:", find_cycle(graph_of(m)))
    for x in m.values():
        for i in x.imports:
            if i.in_function and i.third_party is None:
                ok = all(h[t] for t in i.targets)
                print(
                    ("HEAVY " if ok else "LIGHT ")
                    + f"{x.path.relative_to(ROOT)}:{i.line} {sorted(i.targets)}"
                )
