"""Precomputes the CNN features a training run will read from the feature cache.

Uses the same config (preset + overrides) as `trainers.train`, so the cache
key is the same and training then finds every feature already there. The
cache is sharded: an interrupted run, started again, continues after the
last complete shard; unreadable images are skipped and listed in the
manifest.

Examples:
    python -m trainers.extract_features --preset=flickr8k --dataset=flickr8k \\
        --data_dir=../shared/data/flickr8k
    python -m trainers.extract_features --preset=tiny --splits=train,dev
"""

from absl import app, flags

from vse_tf import config as config_lib
from vse_tf import train_lib
from vse_tf.models import backbone as backbone_lib

_PRESET = flags.DEFINE_enum(
    "preset", "demo", sorted(config_lib.PRESETS), "Config preset."
)
_SPLITS = flags.DEFINE_list(
    "splits", ["train", "dev", "test"], "Splits to extract (a missing test is skipped)."
)
_DATASET = flags.DEFINE_enum(
    "dataset",
    None,
    ["demo", "flickr8k", "karpathy", "coco", "precomp", "csv"],
    "Data set.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data set root.")
_VGG_WEIGHTS = flags.DEFINE_string("vgg_weights", None, "imagenet|none|hed|PATH.")
_IMAGE_FEATURE = flags.DEFINE_enum(
    "image_feature", None, list(backbone_lib.IMAGE_FEATURES), "CNN feature."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Square image input size.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed (the demo data depend on it).")
_MAX_TRAIN_IMAGES = flags.DEFINE_integer(
    "max_train_images", None, "Use N train images."
)
_MAX_EVAL_IMAGES = flags.DEFINE_integer(
    "max_eval_images", None, "Use N dev/test images."
)
_EXTRACT_BATCH_SIZE = flags.DEFINE_integer(
    "extract_batch_size", None, "Images per CNN call (does not change the cache key)."
)
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Feature/demo cache folder.")


def main(argv):
    del argv
    config = config_lib.override(
        config_lib.get_config(_PRESET.value),
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
        vgg_weights=_VGG_WEIGHTS.value,
        image_feature=_IMAGE_FEATURE.value,
        image_size=_IMAGE_SIZE.value,
        seed=_SEED.value,
        max_train_images=_MAX_TRAIN_IMAGES.value,
        max_eval_images=_MAX_EVAL_IMAGES.value,
        extract_batch_size=_EXTRACT_BATCH_SIZE.value,
        cache_dir=_CACHE_DIR.value,
    )
    train_lib.extract_split_features(config, _SPLITS.value)


if __name__ == "__main__":
    app.run(main)
