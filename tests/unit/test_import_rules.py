"""The import rules of the house, read from the source: every module's AST, imports inside
functions (and under ``TYPE_CHECKING``) included, except for the circle rule (import time only).

- the client and the worker never import each other; the gateway (a client of the fleet)
  never imports the worker;
- the dashboard (a view of the fleet) imports neither the worker, the client nor the gateway;
  the gateway may import the dashboard's face (``conveyor.dashboard``: it serves the page at
  ``/dashboard/``), the cli any of it, nothing else any of it;
- the core (``core/``, installed as ``conveyor`` minus its broker, worker, client and cli parts)
  imports nothing from those parts;
- above the broker (client, worker, gateway, dashboard, cli) the only broker modules imported are
  its face: ``conveyor.broker``, ``conveyor.broker.keys`` and ``conveyor.broker.wire`` (the
  package itself, not its insides); the cli and the dashboard (operators' tools) may also import
  ``conveyor.broker.ops`` and its modules;
- no ``redis`` import in the client, the worker or the gateway (the broker's face translates
  Redis errors);
- no import circle among the modules at import time (module-level imports);
- no module of ``broker/``, ``worker/``, ``client/``, ``gateway/``, ``dashboard/`` or the core
  over 400 lines
  (generated code aside: protoc's output, marked DO NOT EDIT).

``KNOWN_VIOLATIONS`` lists what is still broken, each with the reason; a listed entry that no
longer breaks a rule fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
MAX_LINES = 400

# (rule, what) -> why it is still allowed. `what` names the import ("a -> b"), the circle
# ("a <-> b <-> c", sorted) or the file ("broker/wire.py").
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

PARTS = (
    "conveyor.broker",
    "conveyor.worker",
    "conveyor.client",
    "conveyor.gateway",
    "conveyor.dashboard",
    "conveyor.cli",
)
CLIENTS = ("conveyor.client", "conveyor.gateway")  # what sends jobs: never the worker's
FACE = ("conveyor.broker", "conveyor.broker.keys", "conveyor.broker.wire")
OPERATORS = ("conveyor.cli", "conveyor.dashboard")  # may read and act through conveyor.broker.ops


@dataclass(frozen=True)
class Import:
    """One imported project module (or an outside one, by its dotted name)."""

    target: str
    import_time: bool  # at module level, outside `if TYPE_CHECKING:`


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def _package_dirs() -> dict[str, Path]:
    """pyproject's package-dir: installed package -> its folder in the checkout."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        mapping = tomllib.load(file)["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in mapping.items()}


def _modules() -> dict[str, Module]:
    dirs = _package_dirs()
    modules: dict[str, Module] = {}
    for package, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            # a folder that is a package of its own in pyproject is read under its own name
            if any((folder / Path(*parts[: i + 1])) in dirs.values() for i in range(len(parts))):
                continue
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, is_package)
    return modules


MODULES = _modules()


def _part(module: str) -> str:
    """Which part a module is in: one of PARTS, or "conveyor" for the core."""
    for part in PARTS:
        if module == part or module.startswith(part + "."):
            return part
    return "conveyor"


def _known(dotted: str) -> str:
    """The deepest project module a dotted name falls in (the name itself when outside)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return dotted


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: Module) -> Iterator[Import]:
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    import_time: set[int] = set()

    def mark(body: list[ast.stmt]) -> None:
        """Module-level statements run at import: into if/try/with, not under TYPE_CHECKING."""
        for stmt in body:
            import_time.add(id(stmt))
            if isinstance(stmt, ast.If):
                if not _is_type_checking(stmt.test):
                    mark(stmt.body)
                mark(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                for block in (stmt.body, stmt.orelse, stmt.finalbody):
                    mark(block)
                for handler in stmt.handlers:
                    mark(handler.body)
            elif isinstance(stmt, ast.With):
                mark(stmt.body)

    mark(tree.body)
    for node in ast.walk(tree):
        now = id(node) in import_time
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(_known(alias.name), now)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                package = module.name if module.is_package else module.name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"  # `from package import module`
                yield Import(submodule if submodule in MODULES else _known(base), now)


IMPORTS: dict[str, list[Import]] = {name: list(_imports(m)) for name, m in MODULES.items()}


def _edges() -> Iterator[tuple[str, str]]:
    for name, imports in IMPORTS.items():
        for target in sorted({i.target for i in imports}):
            yield name, target


def _layering(rule: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for name, target in _edges():
        src, dst = _part(name), _part(target)
        project = target in MODULES
        broken = False
        if rule == "client-worker":
            broken = project and (
                (src in CLIENTS and dst == "conveyor.worker")
                or (src == "conveyor.worker" and dst in CLIENTS)
            )
        elif rule == "dashboard-view":
            broken = (
                project and src == "conveyor.dashboard" and dst in ("conveyor.worker", *CLIENTS)
            )
        elif rule == "dashboard-face":
            face_ok = src == "conveyor.gateway" and target == "conveyor.dashboard"
            broken = project and dst == "conveyor.dashboard" and src != dst
            broken = broken and src != "conveyor.cli" and not face_ok
        elif rule == "core-upward":
            broken = project and src == "conveyor" and dst != "conveyor"
        elif rule == "broker-face":
            above = src in (*CLIENTS, "conveyor.worker", *OPERATORS)
            cli_ops = src in OPERATORS and (
                target == "conveyor.broker.ops" or target.startswith("conveyor.broker.ops.")
            )
            broken = project and above and dst == "conveyor.broker"
            broken = broken and target not in FACE and not cli_ops
        elif rule == "redis":
            broken = src in (*CLIENTS, "conveyor.worker") and (
                target == "redis" or target.startswith("redis.")
            )
        if broken:
            found.add((rule, f"{name} -> {target}"))
    return found


def _circles() -> set[tuple[str, str]]:
    """Strongly connected components of the import-time graph (Tarjan), as violations."""
    graph = {
        name: sorted({i.target for i in imports if i.import_time and i.target in MODULES})
        for name, imports in IMPORTS.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.add(("circle", " <-> ".join(sorted(component))))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _generated(text: str) -> bool:
    """protoc's output (gateway/grpc's *_pb2*.py): written by a tool from its .proto, whose
    size is the protocol's, never edited by hand (a test keeps it equal to the .proto)."""
    return "DO NOT EDIT" in "".join(text.splitlines()[:3])


def _sizes() -> set[tuple[str, str]]:
    found = set()
    for name, module in MODULES.items():
        text = module.path.read_text()
        too_long = len(text.splitlines()) > MAX_LINES
        if too_long and _part(name) != "conveyor.cli" and not _generated(text):
            found.add(("size", module.rel))
    return found


def _violations(rule: str) -> set[tuple[str, str]]:
    if rule == "circle":
        return _circles()
    if rule == "size":
        return _sizes()
    return _layering(rule)


RULES = [
    "client-worker",
    "dashboard-view",
    "dashboard-face",
    "core-upward",
    "broker-face",
    "redis",
    "circle",
    "size",
]


def test_the_modules_are_found() -> None:
    """The rules below read something: each part has modules, and imports are resolved."""
    for part in ("conveyor", *PARTS):
        assert any(_part(name) == part for name in MODULES), part
    assert "conveyor.broker.keys" in MODULES
    assert "conveyor.errors" in MODULES
    assert any(i.target == "conveyor.errors" for imports in IMPORTS.values() for i in imports)


def test_known_violations_name_a_rule() -> None:
    assert {rule for rule, _ in KNOWN_VIOLATIONS} <= set(RULES)
    assert all(reason.strip() for reason in KNOWN_VIOLATIONS.values())


@pytest.mark.parametrize("rule", RULES)
def test_import_rule(rule: str) -> None:
    found = _violations(rule)
    known = {key for key in KNOWN_VIOLATIONS if key[0] == rule}
    new = sorted(found - known)
    fixed = sorted(known - found)
    assert not new, f"{rule}: broken (fix it, don't list it):\n" + "\n".join(w for _, w in new)
    assert not fixed, (
        f"{rule}: listed in KNOWN_VIOLATIONS but no longer broken (remove it):\n"
        + "\n".join(w for _, w in fixed)
    )


def test_the_rules_catch_what_they_say() -> None:
    """Each checker fires on a crafted case (so an empty finding is not a blind one)."""
    client = next(name for name in MODULES if _part(name) == "conveyor.client")
    saved = IMPORTS[client]
    try:
        IMPORTS[client] = [
            Import("conveyor.worker", True),
            Import("conveyor.broker.clients", True),
            Import("redis.exceptions", False),
        ]
        assert ("client-worker", f"{client} -> conveyor.worker") in _violations("client-worker")
        assert ("broker-face", f"{client} -> conveyor.broker.clients") in _violations("broker-face")
        assert ("redis", f"{client} -> redis.exceptions") in _violations("redis")
        IMPORTS[client] = [Import("conveyor.errors", True)]
        errors = IMPORTS["conveyor.errors"]
        try:
            IMPORTS["conveyor.errors"] = [*errors, Import(client, True)]
            assert ("core-upward", f"conveyor.errors -> {client}") in _violations("core-upward")
            circles = [set(what.split(" <-> ")) for _, what in _violations("circle")]
            assert any({client, "conveyor.errors"} <= circle for circle in circles)
        finally:
            IMPORTS["conveyor.errors"] = errors
    finally:
        IMPORTS[client] = saved


def test_the_dashboard_rules_catch_what_they_say() -> None:
    """The dashboard is a view: the worker's, the client's and the broker's insides are off
    limits to it, the broker's ops are not."""
    board = next(name for name in MODULES if _part(name) == "conveyor.dashboard")
    saved = IMPORTS[board]
    try:
        IMPORTS[board] = [
            Import("conveyor.worker", True),
            Import("conveyor.client", False),
            Import("conveyor.broker.clients", True),
            Import("conveyor.broker.ops.dead_letters", True),
        ]
        view = _violations("dashboard-view")
        assert ("dashboard-view", f"{board} -> conveyor.worker") in view
        assert ("dashboard-view", f"{board} -> conveyor.client") in view
        face = _violations("broker-face")
        assert ("broker-face", f"{board} -> conveyor.broker.clients") in face
        assert ("broker-face", f"{board} -> conveyor.broker.ops.dead_letters") not in face
    finally:
        IMPORTS[board] = saved


def test_the_dashboard_face_rule_catches_what_it_says() -> None:
    """The gateway serves the page through the dashboard's face only; the client, the worker and
    the broker never import the dashboard."""
    gate = next(name for name in MODULES if _part(name) == "conveyor.gateway")
    client = next(name for name in MODULES if _part(name) == "conveyor.client")
    saved = IMPORTS[gate], IMPORTS[client]
    try:
        IMPORTS[gate] = [
            Import("conveyor.dashboard", True),
            Import("conveyor.dashboard.app", False),
        ]
        IMPORTS[client] = [Import("conveyor.dashboard", False)]
        found = _violations("dashboard-face")
        assert ("dashboard-face", f"{gate} -> conveyor.dashboard.app") in found
        assert ("dashboard-face", f"{gate} -> conveyor.dashboard") not in found
        assert ("dashboard-face", f"{client} -> conveyor.dashboard") in found
    finally:
        IMPORTS[gate], IMPORTS[client] = saved


def test_a_checkout_never_shadows_the_installed_package() -> None:
    """Run from a checkout's root, `import conveyor` must not find a folder of the checkout
    instead of the installed package: no top-level folder or module is named `conveyor`."""
    assert not (ROOT / "conveyor").exists()
    assert not (ROOT / "conveyor.py").exists()
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    assert all(Path(folder).parts[0] != "conveyor" for folder in folders.values())
