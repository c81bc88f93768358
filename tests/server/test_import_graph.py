"""The layering of ``sansio/`` and ``server/``, read from the source (AST), not from imports run.

Every import counts: top level, inside functions, and under ``if TYPE_CHECKING:``. Leaves sit at
the bottom, the legs know nothing of calls, ``http`` knows nothing of ``call``, ``app`` composes
and ``cli`` owns processes; every edge points down, so there is no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sansio", "server")
PEERS = ("peers",)  # the local Twilio caller, agent, REST API and the demo (dev tooling)
LOCAL = "server.local"  # where `--agent-url local` and `python -m server demo` start the peers
LEAVES = {
    "server",  # __init__: the version only
    "server.metrics",
    "server.signature",
    "server.tools",
    "server.ws",  # the Twilio frame helpers
    "server.twiml",
    "server.options",
    "server.handoff",  # the signed action URL and resume parameters of a transfer
    "server.twilio_rest",
    "server.routing",  # --route: the agent chosen by the called number
}
#: A package of leaves: its modules import each other, and nothing else of the server.
LEAF_PACKAGES = ("server.records",)
LEAF_EDGES = {
    ("server.options", "server.signature"),  # options builds the call-token hook
    ("server.options", "server.records.store"),  # the default and the form of --records
    ("server.options", "server.records.redact"),  # --redact loads its hook at startup
    ("server.options", "server.twiml"),  # --fallback-target is checked and built at startup
    ("server.options", "server.handoff"),  # the resume hook of the core
    ("server.options", "server.twilio_rest"),  # the REST credentials, read once
    ("server.options", "server.records.webhook"),  # --webhook-url's bounds
    ("server.options", "server.routing"),  # --route files, loaded at startup
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, under TYPE_CHECKING) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def target(module: str) -> str | None:
        if _is(module, PEERS):  # wherever the peers live (here, or a package of their own)
            return module
        while module and module not in known:
            module = module.rpartition(".")[0]
        return module or None

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (module := target(alias.name)) is not None:
                    found.append((module, node.lineno, guarded))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from server import signature` imports a module
                full = f"{base}.{alias.name}"
                module = full if full in known else target(base)
                if module is not None:
                    found.append((module, node.lineno, guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return [(module, line, guarded) for module, line, guarded in found if module != name]


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ, _, _ in graph.get(node, ()):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _is(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read_from_the_source() -> None:
    """The parser sees function-level imports and resolves `from package import module`."""
    graph = _graph()
    assert ("server.options", False) in {(m, g) for m, _, g in graph["server.http"]}
    assert "server.call" in {m for m, _, _ in graph["server.app"]}
    assert LOCAL in {m for m, _, _ in graph["server.app"]}  # a function-level import
    assert any(_is(m, PEERS) for m, _, _ in graph[LOCAL])
    assert "server.signature" in {m for m, _, _ in graph["server.options"]}  # `from server import`
    assert "sansio._bridge" in {m for m, _, _ in graph["sansio"]}  # relative or absolute


def test_no_import_cycle_in_sansio_and_server() -> None:
    assert _cycles(_graph()) == []


def test_no_type_checking_import_between_project_modules() -> None:
    hidden = [
        f"{name}:{line} -> {module}"
        for name, edges in _graph().items()
        for module, line, guarded in edges
        if guarded
    ]
    assert hidden == []


def test_leaves_import_no_server_module() -> None:
    wrong = [
        f"{name}:{line} -> {module}"
        for name, edges in _graph().items()
        if name in LEAVES or _is(name, LEAF_PACKAGES)
        for module, line, _ in edges
        if _is(module, ("server",))
        and (name, module) not in LEAF_EDGES
        and not (_is(name, LEAF_PACKAGES) and _is(module, LEAF_PACKAGES))
    ]
    assert wrong == []


def test_the_core_imports_nothing_from_server() -> None:
    wrong = [
        f"{name}:{line} -> {module}"
        for name, edges in _graph().items()
        if _is(name, ("sansio",))
        for module, line, _ in edges
        if not _is(module, ("sansio",))
    ]
    assert wrong == []


def test_the_legs_know_no_call_and_http_knows_no_call() -> None:
    graph = _graph()
    for name in ("server.twilio_leg", "server.agent_leg", "server.http"):
        above = {"server.call", "server.app", "server.cli", "server.http"} - {name}
        assert {m for m, _, _ in graph[name]} & above == set(), name


def test_one_edge_from_the_server_to_the_peers() -> None:
    """Only ``server.local`` (``--agent-url local`` and the demo) imports the peers."""
    graph = _graph()
    importers = {name for name, found in graph.items() for m, _, _ in found if _is(m, PEERS)}
    assert importers == {LOCAL}


def test_the_peers_import_neither_the_core_nor_the_server() -> None:
    """The peers work against any bridge: no import of ``sansio`` or ``server``, anywhere, and
    the tests and the bench use them, not the other way round."""
    wrong = []
    for path in sorted((ROOT / "peers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            wrong += [
                f"{path.relative_to(ROOT)}:{node.lineno} -> {name}"
                for name in names
                if _is(name, (*PACKAGES, "tests", "bench"))
            ]
    assert wrong == []
