"""The modules of ``search_service`` import each other without a cycle.

``sampler``, ``storage`` and ``trial_index`` used to import each other in a circle (resolved only
by imports inside functions), so which one loaded first decided whether a name existed yet. Now
the layers run one way: ``keys`` <- ``trial_index`` <- ``storage`` <- ``claims`` <- ``sampler``.
Two checks: the import graph parsed from the source (every ``import``, those inside functions
too) is acyclic, and the modules of the old circle import in a fresh interpreter in every order.
"""

from __future__ import annotations

import ast
import graphlib
import itertools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "search_service"


def module_name(file: Path, root: Path) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its source (function bodies
    and ``TYPE_CHECKING`` blocks included). A submodule's import of its own parent package (which
    Python runs first anyway) is not an edge."""
    root = package.parent
    files = {module_name(f, root): f for f in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, file in files.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package up
                    here = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name and not name.startswith(t + "."))
        graph[name] = edges
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (its modules in order), or None when it is acyclic."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_search_service_imports_have_no_cycle():
    graph = import_graph(PACKAGE)
    assert {"search_service.sampler", "search_service.storage", "search_service.trial_index", "search_service.claims"} <= set(graph)
    assert cycle(graph) is None, f"import cycle: {' -> '.join(cycle(graph))}"
    # the layers of the old circle run one way
    assert "search_service.storage" not in graph["search_service.trial_index"]
    assert not {"search_service.sampler", "search_service.claims"} & graph["search_service.storage"]


def test_the_check_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    """The graph sees imports inside functions, where the old circle hid."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import B\nA = 1\n")
    (package / "b.py").write_text("B = 2\n\ndef late():\n    from pkg import a\n    return a.A\n")
    (package / "c.py").write_text("from . import a\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert sorted(set(cycle(graph))) == ["pkg.a", "pkg.b"]


ORDERS = list(itertools.permutations(["sampler", "storage", "trial_index"]))

# One interpreter loads the third-party libraries (torch alone takes seconds), then forks one
# child per order; each child starts with no module of search_service loaded, imports the three
# in its order (then ``claims`` and ``keys``), and exits 0, or 1 with the error on stderr.
_FORK_PER_ORDER = """
import os, sys, traceback
import numpy, optuna, scipy.stats, sqlalchemy, torch  # noqa: F401 (loaded once, shared by the children)
import supernet.paths, supernet.rank_loss, supernet.relation_graph  # noqa: F401 (not search_service)
orders = {orders!r}
assert not any(m.split(".")[0] == "search_service" for m in sys.modules)
failed = []
for order in orders:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for name in [*order, "claims", "keys"]:
                __import__("search_service." + name)
            from search_service.sampler import BUDGET_KEY, MASK_KEY, PATHS_KEY, PRIOR_KEY, RANK_LOSS_KEY, MaskSpace, MROSampler
        except BaseException:
            sys.stderr.write("-".join(order) + ": " + traceback.format_exc())
            code = 1
        sys.stderr.flush()
        os._exit(code)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append("-".join(order))
print("failed:", failed)
sys.exit(1 if failed else 0)
"""


def test_modules_import_in_any_order_in_a_fresh_interpreter():
    """Each order of the old circle's modules, from nothing of search_service loaded."""
    code = _FORK_PER_ORDER.format(orders=ORDERS)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip() == "failed: []"
