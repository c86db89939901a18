"""Layering: no import cycle; serving and retrieval never reach the trainer.

Read from the source with `ast`, so imports inside functions (the lazy ones)
count too: a cycle through a lazy import is still a cycle a reader has to
hold in mind.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vse_tf"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    relative = pathlib.Path(*name.split("."))
    return (ROOT / relative).with_suffix(".py").is_file() or (
        ROOT / relative / "__init__.py"
    ).is_file()


def _imports(path: pathlib.Path) -> set[str]:
    """The vse_tf modules that ``path`` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vse_tf."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "vse_tf"
        ):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        # The package roots only re-export (lazily, for `import vse_tf`).
        graph[name] = {m for m in _imports(path) if m != name and m != "vse_tf"}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_is_read():
    graph = _graph()
    # Hand-checked edges, so an empty or broken graph cannot pass the rest.
    assert "vse_tf.workdir" in graph["vse_tf.serving.saved_model_lib"]
    assert "vse_tf.shard_store" in graph["vse_tf.features"]
    assert "vse_tf.shard_store" in graph["vse_tf.retrieval.index_lib"]
    assert "vse_tf.data.datasets" in graph["vse_tf.train_lib"]


def test_no_import_cycle():
    graph = _graph()
    cycles = sorted(name for name in graph if name in _reachable(graph, name))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("layer", ["vse_tf.serving", "vse_tf.retrieval"])
def test_serving_and_retrieval_do_not_import_the_trainer(layer):
    graph = _graph()
    offenders = {
        name: sorted(
            m for m in _reachable(graph, name) if m.startswith("vse_tf.train_lib")
        )
        for name in graph
        if name.startswith(layer)
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_trainer_does_not_import_serving_or_the_index():
    reached = _reachable(_graph(), "vse_tf.train_lib")
    # (retrieval.html, the page renderer report.html shares with vse-search,
    # is a leaf: it imports only io_utils.)
    forbidden = ("vse_tf.serving", "vse_tf.retrieval.index_lib", "vse_tf.retrieval.ann")
    assert not sorted(m for m in reached if m.startswith(forbidden))
