"""Presets: workdir -> folder -> the same embeddings; the card; hostile files; hf://."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from vse_tf import api, errors, preset, preset_writer
from vse_tf import workdir as workdir_lib


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_export):
    folder = str(tmp_path_factory.mktemp("presets") / "vse-tiny")
    preset_writer.write_preset(tiny_export.workdir, folder)
    return {"folder": folder, "tiny": tiny_export}


@pytest.fixture(scope="module")
def reference(written):
    tiny = written["tiny"]
    embedder = api.Embedder.load(tiny.workdir)
    images = sorted(os.listdir(os.path.join(tiny.data_dir, "images")))[:6]
    paths = [os.path.join(tiny.data_dir, "images", name) for name in images]
    sentences = ["a red square", "two blue circles on a white background"]
    return {
        "paths": paths,
        "sentences": sentences,
        "images": embedder.encode_images(paths),
        "texts": embedder.encode_texts(sentences),
    }


def _text_files(folder):
    return {
        name: open(os.path.join(folder, name), encoding="utf-8").read()
        for name in ("config.json", "metadata.json", "README.md", "vocab.txt")
    }


def test_the_folder_holds_the_five_files_and_no_local_path(written):
    folder, tiny = written["folder"], written["tiny"]
    assert sorted(os.listdir(folder)) == [
        "README.md",
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "vocab.txt",
    ]
    for name, text in _text_files(folder).items():
        for local in (tiny.workdir, tiny.data_dir, os.path.dirname(tiny.workdir)):
            assert local not in text, (name, local)
    # No half-written sibling folder is left.
    assert os.listdir(os.path.dirname(folder)) == ["vse-tiny"]
    with pytest.raises(errors.UserError, match="exists"):
        preset_writer.write_preset(tiny.workdir, folder)


def test_the_preset_embeds_as_the_workdir(written, reference):
    embedder = api.Embedder.from_preset(written["folder"])
    np.testing.assert_allclose(
        embedder.encode_images(reference["paths"]), reference["images"], atol=1e-5
    )
    np.testing.assert_allclose(
        embedder.encode_texts(reference["sentences"]), reference["texts"], atol=1e-5
    )
    # Embedder.load knows a preset folder by its files.
    assert isinstance(
        api.Embedder.load(written["folder"]).config, type(embedder.config)
    )


def test_metadata(written):
    metadata = json.loads(open(os.path.join(written["folder"], "metadata.json")).read())
    assert metadata["format"] == preset.PRESET_FORMAT
    assert metadata["library"] == "vse_tf"
    assert set(metadata["versions"]) == {"vse_tf", "keras", "tensorflow"}
    dev = json.loads(
        open(os.path.join(written["tiny"].workdir, "metrics_dev.json")).read()
    )
    assert metadata["metrics"]["dev"]["rsum"] == dev["rsum"]
    assert metadata["metrics"]["test"]["i2t_r1"] is not None
    assert metadata["dataset"]["splits"]["train"] == 24
    assert metadata["training"]["seconds"] > 0
    assert metadata["training"]["machine"]["cores"] == os.cpu_count()


def test_the_model_card_front_matter_matches_the_metadata(written):
    yaml = pytest.importorskip(
        "yaml", reason='PyYAML missing: pip install "vse_tf[test]"'
    )
    text = open(os.path.join(written["folder"], "README.md"), encoding="utf-8").read()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    card = yaml.safe_load(front)
    metadata = json.loads(open(os.path.join(written["folder"], "metadata.json")).read())
    assert card["library_name"] == "vse_tf"
    assert "image-text-retrieval" in card["tags"]
    assert card["datasets"] == [metadata["dataset"]["name"]]
    results = card["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["dev", "test"]
    for result in results:
        table = metadata["metrics"][result["dataset"]["split"]]
        values = {m["type"]: m["value"] for m in result["metrics"]}
        assert values == {key: table[key] for key in values}
        assert set(values) == set(preset_writer._TABLE_KEYS)
    assert "## Intended use and limits" in body
    assert (
        f"rsum (the six recalls summed): **{metadata['metrics']['dev']['rsum']}**"
        in (body)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["model"].update(__reduce__="os.system"), "model.__reduce__"),
        (lambda c: c.update(python={"code": "x"}), "unknown config section 'python'"),
        (lambda c: c["model"].update(embed_dim="16"), "model.embed_dim must be int"),
        (lambda c: c["train"].update(margin=True), "train.margin must be float"),
        (lambda c: c["model"].update(text_rnn="transformer"), "text_rnn"),
    ],
)
def test_a_wrong_or_hostile_config_field_is_one_sentence(
    written, tmp_path, change, message
):
    folder = tmp_path / "p"
    shutil.copytree(written["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.ConfigError, match=message) as caught:
        api.Embedder.from_preset(str(folder))
    assert "\n" not in str(caught.value)


def test_a_newer_preset_says_so(written, tmp_path):
    folder = tmp_path / "p"
    shutil.copytree(written["folder"], folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["format"] = preset.PRESET_FORMAT + 1
    metadata["versions"]["vse_tf"] = "9.0.0"
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(errors.UserError, match="written by vse_tf 9.0.0.*upgrade"):
        api.Embedder.from_preset(str(folder))
    with pytest.raises(errors.MissingError, match="no preset folder"):
        api.Embedder.from_preset(str(tmp_path))


def test_a_preset_is_a_workdir_for_the_library(written, reference):
    config, model = workdir_lib.load_trained_model(written["folder"])
    assert config == workdir_lib.read_workdir_config(written["folder"])
    embeddings = model.text_tower(np.array(reference["sentences"]), training=False)
    np.testing.assert_allclose(embeddings, reference["texts"], atol=1e-5)


def _hub_cache(root, repo: str, folder: str) -> None:
    """The Hugging Face cache layout of one downloaded revision of ``repo``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(folder, base / "snapshots" / commit)


def test_hf_preset_from_the_cache_offline(written, reference, tmp_path, monkeypatch):
    pytest.importorskip(
        "huggingface_hub", reason='huggingface_hub missing: pip install "vse_tf[hub]"'
    )
    from huggingface_hub import constants

    _hub_cache(tmp_path / "hub", "someone/vse-tiny", written["folder"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    embedder = api.Embedder.load("hf://someone/vse-tiny")
    np.testing.assert_allclose(
        embedder.encode_texts(reference["sentences"]), reference["texts"], atol=1e-5
    )
    with pytest.raises(errors.MissingError, match="in the Hugging Face cache"):
        api.Embedder.from_preset("hf://someone/not-there")
    with pytest.raises(errors.InputError, match="hf://OWNER/NAME"):
        api.Embedder.from_preset("hf://no-slash")


def test_save_preset_from_the_api(written, tmp_path):
    embedder = api.Embedder.load(written["tiny"].workdir)
    folder = embedder.save_preset(str(tmp_path / "again"))
    assert preset.is_preset(folder)
    with pytest.raises(errors.UserError, match="needs the training workdir"):
        api.Embedder.from_preset(folder).save_preset(str(tmp_path / "x"))


def test_an_index_built_from_a_preset_equals_the_export_s(written, tmp_path):
    from vse_tf.retrieval import encoders, index_build

    tiny = written["tiny"]
    images = os.path.join(tiny.data_dir, "images")
    encoder = encoders.get_encoder(written["folder"])
    assert isinstance(encoder, encoders.PresetEncoder)
    from_preset = index_build.build_image_index(
        None, images, str(tmp_path / "p"), dtype="float32", encoder=encoder, verbose=0
    )
    from_export = index_build.build_image_index(
        tiny.export_dir, images, str(tmp_path / "e"), dtype="float32", verbose=0
    )
    assert from_preset.items == from_export.items
    np.testing.assert_allclose(
        from_preset.embeddings, from_export.embeddings, atol=1e-5
    )
    assert from_preset.manifest["model"]["preset"] is True


def test_evaluating_a_preset_scores_as_the_workdir_and_writes_nothing(written):
    from vse_tf import evaluation

    tiny = written["tiny"]
    before = sorted(os.listdir(written["folder"]))
    values = evaluation.evaluate_workdir(
        written["folder"], "dev", data_dir=tiny.data_dir
    )
    dev = json.loads(open(os.path.join(tiny.workdir, "metrics_dev.json")).read())
    assert values["rsum"] == pytest.approx(dev["rsum"], abs=0.01)
    assert sorted(os.listdir(written["folder"])) == before


@pytest.mark.slow(reason="exports the preset as a SavedModel and as TFLite (30 s)")
def test_a_preset_exports_like_a_workdir(written, reference, tmp_path):
    from vse_tf.retrieval import encoders
    from vse_tf.serving import saved_model_lib
    from vse_tf.serving.tflite import export as tflite_export

    version = saved_model_lib.export_saved_model(
        written["folder"], str(tmp_path / "models")
    )
    encoder = encoders.SavedModelEncoder(version)
    np.testing.assert_allclose(
        encoder.encode_text(reference["sentences"]), reference["texts"], atol=1e-5
    )
    data = [open(p, "rb").read() for p in reference["paths"]]
    np.testing.assert_allclose(
        encoder.encode_images(data), reference["images"], atol=1e-5
    )
    files, manifest = tflite_export.export_tflite(written["folder"], "none")
    config = json.loads(open(os.path.join(written["folder"], "config.json")).read())
    assert manifest["source"]["dataset"] == config["data"]["dataset"]
    assert (
        files["vocab.txt"]
        == open(os.path.join(written["folder"], "vocab.txt"), "rb").read()
    )


def test_the_card_names_the_command_that_trains_the_config():
    from vse_tf import config as config_lib

    lite = config_lib.override(
        config_lib.get_config("flickr8k_lite"), dataset="flickr8k", data_dir="/x"
    )
    assert preset_writer.training_command(lite.to_dict()) == (
        "python -m trainers.train --preset=flickr8k_lite --dataset=flickr8k "
        "--data_dir=DATA --workdir=RUN"
    )
    longer = config_lib.override(lite, epochs=lite.train.epochs + 3)
    assert preset_writer.training_command(longer.to_dict()) == (
        "python -m trainers.train --preset=flickr8k_lite --dataset=flickr8k "
        f"--data_dir=DATA --epochs={lite.train.epochs + 3} --workdir=RUN"
    )


def test_the_card_describes_the_fine_tuned_recipe_s_towers():
    from vse_tf import config as config_lib

    values = config_lib.get_config("flickr8k_lite_ft").to_dict()
    metadata = {
        "dataset": {"name": "flickr8k", "splits": {"train": 6000, "dev": 1000}},
        "metrics": {},
        "shapes": {"word_dim": 50},
        "training": {"seconds": 60.0, "machine": {"cores": 2, "cpu": "AMD EPYC"}},
    }
    card = preset_writer.model_card(values, metadata, "vse-f8k-ft")
    assert "-> bidirectional LSTM, mean of states -> L2-normalised." in card
    assert "each image is embedded with its mirror image" in card
    assert "- Loss: `infonce` (CLIP's symmetric softmax) over in-batch pairs, " in card
    assert "temperature fixed at 0.07." in card and "margin" not in card
    hinge = config_lib.override(config_lib.get_config("flickr8k_lite"), loss="sum")
    plain_card = preset_writer.model_card(hinge.to_dict(), metadata, "vse-f8k-lite")
    assert "-> GRU -> L2-normalised." in plain_card
    assert "mirror" not in plain_card
    assert "- Loss: `sum` over in-batch pairs, both directions, margin 0.2." in (
        plain_card
    )
    learnt = config_lib.override(
        config_lib.get_config("flickr8k_lite"), learn_temperature=True
    )
    learnt_card = preset_writer.model_card(learnt.to_dict(), metadata, "vse-nce")
    assert "temperature learnt from 0.07." in learnt_card
