"""What `vse_tf.evaluation` writes."""

import json

from vse_tf import evaluation


def test_metrics_files_hold_no_float_noise(tmp_path):
    values = {"i2t_r1": 95.89999999999999, "t2i_r5": 46.220000000000006, "n": 1000}
    path = evaluation.write_metrics(str(tmp_path), "test", values, {"note": "x"})
    with open(path) as f:
        text = f.read()
    assert "95.9," in text and "95.899" not in text
    assert json.loads(text) == {"i2t_r1": 95.9, "t2i_r5": 46.22, "n": 1000, "note": "x"}


def test_ensemble_scores_are_the_mean_of_the_cosines():
    import numpy as np

    rng = np.random.default_rng(0)

    def unit(shape):
        x = rng.normal(size=shape)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    members = [(unit([3, 4]), unit([5, 4])), (unit([3, 2]), unit([5, 2]))]
    images, captions = evaluation.ensemble_embeddings(members)
    assert images.shape == (3, 6) and captions.shape == (5, 6)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-6)
    mean_cosine = sum(i @ c.T for i, c in members) / 2
    np.testing.assert_allclose(images @ captions.T, mean_cosine, atol=1e-12)


def test_an_ensemble_of_one_model_twice_scores_as_the_model(tiny_export):
    import pytest

    from vse_tf import errors

    with pytest.raises(errors.ConfigError, match="at least two"):
        evaluation.evaluate_ensemble([tiny_export.workdir])
    with open(f"{tiny_export.workdir}/metrics_test.json") as f:
        trained = json.load(f)
    twice = evaluation.evaluate_ensemble([tiny_export.workdir] * 2, split="test")
    # Two copies of one unit embedding, side by side and / sqrt(2), give
    # the same dot products: every metric is the model's own.
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r10", "rsum"):
        assert twice[key] == pytest.approx(trained[key], abs=1e-6), key


def test_flip_average_scores_each_image_by_both_views(tiny_export, tmp_path):
    import shutil

    import numpy as np
    import pytest

    from vse_tf import config as config_lib
    from vse_tf import metrics as metrics_lib
    from vse_tf import workdir
    from vse_tf.data import datasets

    config, model = workdir.load_trained_model(
        tiny_export.workdir, include_backbone=None
    )
    flipping = config_lib.override(config, flip_average=True)
    split = datasets.load_split(flipping, "test")
    data = evaluation.prepare_eval(flipping, split, model.text_tower.tokenizer)
    plain = evaluation.prepare_eval(config, split, model.text_tower.tokenizer)
    assert data.features.shape == (2, *plain.features.shape)
    np.testing.assert_array_equal(data.features[0], plain.features)
    assert np.abs(data.features[1] - data.features[0]).max() > 0  # the mirrors
    images, captions = evaluation.embed_eval_data(model, data, flipping)
    one = model.image_tower.embed_cached(data.features[0]).numpy()
    mirror = model.image_tower.embed_cached(data.features[1]).numpy()
    expected = (one + mirror) / np.linalg.norm(one + mirror, axis=1, keepdims=True)
    np.testing.assert_allclose(images, expected, atol=1e-6)
    _, plain_captions = evaluation.embed_eval_data(model, plain, config)
    np.testing.assert_array_equal(captions, plain_captions)
    # Any trained workdir can be scored so (`trainers.evaluate --flip_average`).
    copy = str(tmp_path / "workdir")
    shutil.copytree(tiny_export.workdir, copy)
    scored = evaluation.evaluate_workdir(copy, split="test", flip_average=True)
    want = metrics_lib.retrieval_metrics(expected, captions, 5)
    assert scored["rsum"] == pytest.approx(want["rsum"], abs=1e-6)
    with open(f"{copy}/metrics_test.json") as f:
        assert json.load(f)["flip_average"] is True
