"""Layering: layers point down, no import cycle, serving never reaches the trainer.

Read from the source with `ast`, so imports inside functions (the lazy ones)
count too: a cycle through a lazy import is still a cycle a reader has to
hold in mind.

`LAYERS` states the layer of every module once, lowest first; a module may
import only modules of its own or a lower layer. A new module must be given
a layer here (the test names any that has none).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vse_tf"

# Lowest first. A name ending in ".*" covers a package and its modules; the
# longest matching name decides.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Plain Python and files: no TensorFlow model code.
    (
        "foundation",
        (
            "vse_tf.errors",
            "vse_tf.io_utils",
            "vse_tf.quiet",
            "vse_tf.models.catalog",
            "vse_tf.config",
            "vse_tf.progress",
            "vse_tf.hardware",
            "vse_tf.metrics",
            "vse_tf.shard_store",
            "vse_tf.retrieval.search",
            "vse_tf.retrieval.ann",
        ),
    ),
    # Bytes and pixels, text, data sets: inputs, before any model.
    (
        "inputs",
        (
            "vse_tf.images",
            "vse_tf.text",
            "vse_tf.losses",
            "vse_tf.weight_average",
            "vse_tf.distribute",
            "vse_tf.report",
            "vse_tf.data.*",
            "vse_tf.serving.image_decode",
            "vse_tf.serving.client",
            "vse_tf.serving.c_api",
            "vse_tf.serving.loader",
            "vse_tf.retrieval.inputs",
            "vse_tf.retrieval.html",
        ),
    ),
    # The Keras models.
    ("models", ("vse_tf.models.*",)),
    # What is built on a model: cached features, the joint model, workdirs.
    (
        "model use",
        (
            "vse_tf.features.*",
            "vse_tf.modeling",
            "vse_tf.workdir",
            "vse_tf.evaluation",
            "vse_tf.projector",
            "vse_tf.preset",
            "vse_tf.retrieval.encoders",
            "vse_tf.retrieval.words",
        ),
    ),
    # Jobs: training, export, indexes, pipelines.
    (
        "jobs",
        (
            "vse_tf.train_lib",
            "vse_tf.serving.*",
            "vse_tf.retrieval.*",
            "vse_tf.pipelines.*",
            "vse_tf.web.*",
            "vse_tf.preset_writer",
        ),
    ),
    # The notebook surface.
    ("api", ("vse_tf.api", "vse_tf")),
)


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
    assert "vse_tf.shard_store" in graph["vse_tf.features.extraction"]
    assert "vse_tf.shard_store" in graph["vse_tf.retrieval.index_build"]
    assert "vse_tf.data.datasets" in graph["vse_tf.train_lib"]


def _layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            prefix = name[:-2] if name.endswith(".*") else None
            matches = module == name or (
                prefix is not None
                and (module == prefix or module.startswith(prefix + "."))
            )
            if matches and len(name) > best_len:
                best, best_len = rank, len(name)
    return best


def test_every_module_has_a_layer():
    assert not [name for name in _graph() if _layer_of(name) is None]


def test_the_layer_table_is_read():
    # Hand-checked, so a table that matches nothing cannot pass.
    assert _layer_of("vse_tf.config") == 0
    assert _layer_of("vse_tf.data.readers.coco") == 1
    assert _layer_of("vse_tf.serving.loader") == 1
    assert _layer_of("vse_tf.serving.saved_model_lib") == 4
    assert _layer_of("vse_tf.retrieval.search") == 0
    assert _layer_of("vse_tf.retrieval.index_build") == 4


def test_imports_point_down_or_sideways():
    graph = _graph()
    upward = sorted(
        f"{name} ({LAYERS[_layer_of(name)][0]}) imports {target} "
        f"({LAYERS[_layer_of(target)][0]})"
        for name, targets in graph.items()
        for target in targets
        if _layer_of(target) > _layer_of(name)
    )
    assert not upward, "\n".join(upward)


def test_search_imports_no_model_code_readers_or_weights_reader():
    """`vse_tf.retrieval.search` (numpy top-k) stays light: run in a fresh process."""
    code = "import sys, vse_tf.retrieval.search; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(result.stdout.split())
    assert "vse_tf.retrieval.search" in loaded
    heavy = ("tensorflow", "keras", "vse_tf.models", "vse_tf.data")
    assert not sorted(m for m in loaded if m.startswith(heavy))


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
    # imports only io_utils and images.)
    forbidden = (
        "vse_tf.serving",
        "vse_tf.retrieval.index_lib",
        "vse_tf.retrieval.index_build",
        "vse_tf.retrieval.ann",
    )
    assert not sorted(m for m in reached if m.startswith(forbidden))
