"""TFLite export parity: size, CPU latency, cosine and R@1 against Keras.

For each quantisation and each tower this converts a trained workdir's best
model (`vse_tf.serving.tflite.export.export_tflite`), runs it in LiteRT on the
workdir's TEST split (real images and captions, 5 captions per image) and
prints:

* size in MB;
* per-example CPU latency: median over ``--num_runs`` calls at batch 1;
* mean and min cosine of the LiteRT embeddings to the reference ones: the
  Keras towers, or with ``--saved_model`` the TF Serving SavedModel
  exported from the same workdir (its ``encode_image_pixels`` and
  ``encode_text`` signatures; its own cosine to Keras is printed too);
* retrieval R@1 (i2t, t2i) of the LiteRT embeddings, next to Keras's.

The last line is one JSON object holding every figure.

With several comma-separated ``--workdir`` (e.g. a VGG16 and an
EfficientNet-Lite run on the same split) each gets its table, then one table
puts their image towers side by side with size and latency ratios.

Example:
    python -m benchmarks.tflite_parity --workdir=runs/demo96 --quantize=all \
        --saved_model=runs/models_demo/1
    python -m benchmarks.tflite_parity --split=dev --max_images=200 \
        --workdir=runs/f8k_vgg,runs/f8k_lite
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from vse_tf import images as images_lib
from vse_tf import metrics as metrics_lib
from vse_tf import text as text_lib
from vse_tf import workdir as workdir_lib
from vse_tf.data import datasets
from vse_tf.serving.tflite import convert as tflite_convert
from vse_tf.serving.tflite import export as tflite_export
from vse_tf.serving.tflite import runner as tflite_runner
from vse_tf.serving.tflite.manifest import IMAGE_FILE, STRINGS_FILE, TEXT_FILE

_WORKDIR = flags.DEFINE_list(
    "workdir",
    None,
    "Training workdir(s), comma-separated: e.g. a VGG16 and an "
    "EfficientNet-Lite run, measured one after the other on the same images.",
    required=True,
)
_MAX_IMAGES = flags.DEFINE_integer(
    "max_images", 0, "Use the first N images of the split (0 = all)."
)
_QUANTIZE = flags.DEFINE_string(
    "quantize",
    "all",
    "'all' or a comma-separated subset of none,float16,dynamic,int8.",
)
_NUM_RUNS = flags.DEFINE_integer("num_runs", 30, "Batch-1 runs timed per tower.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "LiteRT interpreter threads.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size of the parity runs.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate on.")
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model",
    None,
    "Optional SavedModel version folder exported from --workdir "
    "(export.export_saved_model); cosines are then measured against its "
    "encode_image_pixels / encode_text signatures instead of Keras.",
)

TOWERS = (IMAGE_FILE, TEXT_FILE, STRINGS_FILE)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )


def _batched(fn, inputs, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    )


def _median_ms(fn, example, runs: int) -> float:
    fn(example)  # warm-up (allocation, delegate preparation)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(example)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _r1(image_emb: np.ndarray, caption_emb: np.ndarray) -> dict[str, float]:
    metrics = metrics_lib.retrieval_metrics(
        image_emb, caption_emb, datasets.CAPTIONS_PER_IMAGE
    )
    return {"i2t_r1": metrics["i2t_r1"], "t2i_r1": metrics["t2i_r1"]}


def _summary(cosine: np.ndarray) -> dict[str, float]:
    return {"cos_mean": float(cosine.mean()), "cos_min": float(cosine.min())}


def _saved_model_embeddings(
    path: str, images: np.ndarray, captions: list[str], batch_size: int
) -> dict[str, np.ndarray]:
    """Embeddings from a TF Serving SavedModel's pixel and text signatures.

    Args:
        path: SavedModel version folder (`vse_tf.serving.saved_model_lib`).
        images: ``float32 [N, S, S, 3]`` RGB 0..255.
        captions: ``5N`` sentences.
        batch_size: Examples per call.

    Returns:
        Tower file name -> ``float32 [N or 5N, D]``; both text towers get
        the ``encode_text`` embeddings of the captions.
    """
    loaded = tf.saved_model.load(path)
    pixels = loaded.signatures["encode_image_pixels"]
    text = loaded.signatures["encode_text"]
    image_emb = _batched(
        lambda x: pixels(pixels=tf.constant(x))["embedding"].numpy(),
        images,
        batch_size,
    )
    text_emb = _batched(
        lambda x: text(text=tf.constant(x))["embedding"].numpy(),
        captions,
        batch_size,
    )
    return {
        IMAGE_FILE: image_emb,
        TEXT_FILE: text_emb,
        STRINGS_FILE: text_emb,
    }


def main(argv):
    del argv
    modes = (
        list(tflite_convert.QUANTIZE_MODES)
        if _QUANTIZE.value == "all"
        else _QUANTIZE.value.split(",")
    )
    if _SAVED_MODEL.value and len(_WORKDIR.value) > 1:
        raise app.UsageError("--saved_model needs exactly one --workdir")
    runs = [_measure(workdir, modes) for workdir in _WORKDIR.value]
    if len(runs) > 1:
        _print_image_comparison(runs)
    print(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, sort_keys=True))


def _measure(workdir: str, modes: list[str]) -> dict:
    """Every figure of one workdir's export (and prints its table)."""
    config, model = workdir_lib.load_trained_model(workdir)
    split = datasets.load_split(config, _SPLIT.value)
    if _MAX_IMAGES.value:
        split = split.take_images(_MAX_IMAGES.value)
    split = datasets.protocol_view(split)
    size = config.data.image_size
    images = np.concatenate(
        [b.numpy() for b in images_lib.image_dataset(split.image_paths, size, 32)]
    )
    captions = list(split.captions)
    tokens = text_lib.encode_captions(model.text_tower.tokenizer, captions)

    encode_image = tf.function(model.image_tower.call)
    encode_tokens = tf.function(model.text_tower.encode_tokens)
    encode_text = tf.function(model.text_tower.call)
    keras_emb = {
        IMAGE_FILE: _batched(lambda x: encode_image(x).numpy(), images, _BATCH.value),
        TEXT_FILE: _batched(lambda x: encode_tokens(x).numpy(), tokens, _BATCH.value),
        STRINGS_FILE: _batched(
            lambda x: encode_text(tf.constant(x)).numpy(), captions, _BATCH.value
        ),
    }
    reference = keras_emb
    saved_model = None
    if _SAVED_MODEL.value:
        reference = _saved_model_embeddings(
            _SAVED_MODEL.value, images, captions, _BATCH.value
        )
        saved_model = {
            "path": os.path.abspath(_SAVED_MODEL.value),
            "cos_to_keras": {
                name: _summary(_cosine(reference[name], keras_emb[name]))
                for name in TOWERS
            },
            "retrieval": _r1(reference[IMAGE_FILE], reference[TEXT_FILE]),
        }
    inputs = {
        IMAGE_FILE: images,
        TEXT_FILE: tokens,
        STRINGS_FILE: captions,
    }
    keras_fns = {
        IMAGE_FILE: lambda x: encode_image(x).numpy(),
        TEXT_FILE: lambda x: encode_tokens(x).numpy(),
        STRINGS_FILE: lambda x: encode_text(tf.constant(x)).numpy(),
    }
    results = {
        "workdir": os.path.abspath(workdir),
        "backbone": f"{config.model.backbone} {config.model.image_feature}",
        "split": _SPLIT.value,
        "images": len(images),
        "captions": len(captions),
        "image_size": size,
        "embed_dim": config.model.embed_dim,
        "max_length": config.data.max_length,
        "num_threads": _NUM_THREADS.value,
        "num_runs": _NUM_RUNS.value,
        "reference": "saved_model" if saved_model else "keras",
        "saved_model": saved_model,
        "keras": {
            "latency_ms": {
                name: _median_ms(keras_fns[name], inputs[name][:1], _NUM_RUNS.value)
                for name in TOWERS
            },
            "retrieval": _r1(keras_emb[IMAGE_FILE], keras_emb[TEXT_FILE]),
        },
        "variants": {},
    }

    for quantize in modes:
        start = time.time()
        files, manifest = tflite_export.export_tflite(workdir, quantize)
        convert_s = time.time() - start
        towers, emb = {}, {}
        for name in TOWERS:
            runner = tflite_runner.TFLiteTower(
                files[name], num_threads=_NUM_THREADS.value
            )
            emb[name] = _batched(runner, inputs[name], _BATCH.value)
            cosine = _cosine(emb[name], reference[name])
            towers[name] = {
                "size_mb": len(files[name]) / 1e6,
                "latency_ms": _median_ms(runner, inputs[name][:1], _NUM_RUNS.value),
                "cos_mean": float(cosine.mean()),
                "cos_min": float(cosine.min()),
                "delegate": runner.delegate,
                "quantization": manifest["files"][name]["quantization"],
            }
        results["variants"][quantize] = {
            "convert_s": convert_s,
            "towers": towers,
            "retrieval": _r1(emb[IMAGE_FILE], emb[TEXT_FILE]),
            "retrieval_strings": _r1(emb[IMAGE_FILE], emb[STRINGS_FILE]),
        }
        print(f"{quantize}: converted in {convert_s:.0f}s", flush=True)

    _print_table(results)
    return results


def _print_image_comparison(runs: list[dict]) -> None:
    """The image towers of every run, side by side, with ratios to the first."""
    print("\nimage towers side by side (ratios: to the first run's same variant)")
    header = (
        f"{'backbone':30} {'variant':8} {'MB':>7} {'ms/img':>8} {'cos mean':>9} "
        f"{'cos min':>9} {'i2t R@1':>7} {'t2i R@1':>7} {'MB x':>6} {'ms x':>6}"
    )
    print(header)
    print("-" * len(header))
    first = runs[0]["variants"]
    for run in runs:
        for quantize, variant in run["variants"].items():
            tower = variant["towers"][IMAGE_FILE]
            base = first.get(quantize, {}).get("towers", {}).get(IMAGE_FILE)
            size_x = tower["size_mb"] / base["size_mb"] if base else float("nan")
            time_x = tower["latency_ms"] / base["latency_ms"] if base else float("nan")
            r1 = variant["retrieval"]
            print(
                f"{run['backbone']:30} {quantize:8} {tower['size_mb']:7.2f} "
                f"{tower['latency_ms']:8.2f} {tower['cos_mean']:9.6f} "
                f"{tower['cos_min']:9.6f} {r1['i2t_r1']:7.1f} {r1['t2i_r1']:7.1f} "
                f"{size_x:6.2f} {time_x:6.2f}"
            )


def _print_table(results: dict) -> None:
    keras = results["keras"]
    print(
        f"\n{results['backbone']}, {results['split']} split: "
        f"{results['images']} images, "
        f"{results['captions']} captions; batch-1 latency = median of "
        f"{results['num_runs']} runs, {results['num_threads']} LiteRT thread(s)"
    )
    header = (
        f"{'variant':8} {'tower':26} {'MB':>7} {'ms/ex':>8} {'cos mean':>9} "
        f"{'cos min':>9}  {'i2t R@1':>7} {'t2i R@1':>7}"
    )
    print(header)
    print("-" * len(header))
    retrieval = keras["retrieval"]
    saved_model = results["saved_model"]
    for name in TOWERS:
        cos = (
            saved_model["cos_to_keras"][name]
            if saved_model
            else {"cos_mean": 1.0, "cos_min": 1.0}
        )
        print(
            f"{'keras':8} {name:26} {'':>7} {keras['latency_ms'][name]:8.2f} "
            f"{cos['cos_mean']:9.6f} {cos['cos_min']:9.6f}  "
            f"{retrieval['i2t_r1']:7.1f} {retrieval['t2i_r1']:7.1f}"
        )
    if saved_model:
        retrieval = saved_model["retrieval"]
        print(
            f"{'savedmdl':8} {'encode_image_pixels/text':26} {'':>7} {'':>8} "
            f"{1.0:9.6f} {1.0:9.6f}  {retrieval['i2t_r1']:7.1f} "
            f"{retrieval['t2i_r1']:7.1f}"
        )
    for quantize, variant in results["variants"].items():
        for name in TOWERS:
            tower = variant["towers"][name]
            r1 = variant["retrieval_strings" if name == STRINGS_FILE else "retrieval"]
            print(
                f"{quantize:8} {name:26} {tower['size_mb']:7.2f} "
                f"{tower['latency_ms']:8.2f} {tower['cos_mean']:9.6f} "
                f"{tower['cos_min']:9.6f}  {r1['i2t_r1']:7.1f} {r1['t2i_r1']:7.1f}"
            )
    print(
        f"cos = cosine to the {results['reference']} embeddings (the keras "
        "rows: the SavedModel's cosine to Keras, when one is given). R@1 on a "
        "text-tower row pairs that text model with the same variant's image "
        "tower.\n"
    )
    for quantize, variant in results["variants"].items():
        for name in TOWERS:
            note = variant["towers"][name]["quantization"]["summary"]
            print(f"{quantize:8} {name:26} {note}")
    print()


if __name__ == "__main__":
    app.run(main)
