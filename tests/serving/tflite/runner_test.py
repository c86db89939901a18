"""`TFLiteTower`: the LiteRT interpreter wrapper and its XNNPACK fallback."""

import pytest

from tests.serving.tflite.helpers import cosine as _cosine
from vse_tf.serving.tflite import manifest as manifest_lib
from vse_tf.serving.tflite import runner as runner_lib

pytest.importorskip(
    "ai_edge_litert", reason='needs the LiteRT interpreter: pip install "vse_tf[lite]"'
)


def test_runner_drops_xnnpack_when_it_fails_to_prepare(exported, reference):
    # The int8 text tower of a D=256 model fails in XNNPACK at invoke time
    # ("failed to prepare"); the tiny model does not, so simulate it.
    files, _ = exported("none")
    runner = runner_lib.TFLiteTower(files[manifest_lib.TEXT_FILE])
    assert runner.delegate == "default"
    run = runner._run

    def failing_with_xnnpack(array):
        if runner.delegate == "default":
            raise RuntimeError(
                "Node number 1 (TfLiteXNNPackDelegate) failed to prepare."
            )
        return run(array)

    runner._run = failing_with_xnnpack
    got = runner(reference["tokens"])
    assert runner.delegate == "none"
    assert _cosine(got, reference["token_emb"]).min() >= 0.99999
