"""Flags shared by `trainers.train` and `trainers.extract_features`.

Both scripts must build the same config from the same flags (the feature
cache key comes from it), so the data and image-feature flags are defined
once, here, and `data_overrides` turns them into `config_lib.override`
keywords.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from vse_tf import config as config_lib
from vse_tf.models import backbone as backbone_lib

PRESET = flags.DEFINE_enum(
    "preset", "demo", sorted(config_lib.PRESETS), "Config preset."
)
DATASET = flags.DEFINE_enum(
    "dataset",
    None,
    ["demo", "flickr8k", "karpathy", "coco", "precomp", "csv"],
    "Data set.",
)
DATA_DIR = flags.DEFINE_string("data_dir", None, "Data set root.")
BACKBONE = flags.DEFINE_enum(
    "backbone",
    None,
    list(backbone_lib.BACKBONES),
    "Image CNN: vgg16 (the paper's) or an ImageNet EfficientNet-Lite.",
)
VGG_WEIGHTS = flags.DEFINE_string(
    "vgg_weights", None, "VGG16 weights: imagenet|none|hed|PATH."
)
LITE_WEIGHTS = flags.DEFINE_string(
    "lite_weights", None, "EfficientNet-Lite weights: pretrained|none|PATH."
)
IMAGE_FEATURE = flags.DEFINE_enum(
    "image_feature",
    None,
    list(backbone_lib.IMAGE_FEATURES),
    "CNN feature (VGG16: fc7, pool5*; EfficientNet-Lite: head_*).",
)
IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Square image input size.")
SEED = flags.DEFINE_integer("seed", None, "Random seed (the demo data depend on it).")
MAX_TRAIN_IMAGES = flags.DEFINE_integer("max_train_images", None, "Use N train images.")
MAX_EVAL_IMAGES = flags.DEFINE_integer(
    "max_eval_images", None, "Use N dev/test images."
)
CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Feature/demo cache folder.")
AUGMENT_FLIP = flags.DEFINE_bool(
    "augment_flip",
    None,
    "Train on cached features of each image and of its mirror image.",
)


def base_config() -> config_lib.Config:
    """The ``--preset`` config with the shared flags applied."""
    return config_lib.override(config_lib.get_config(PRESET.value), **data_overrides())


def data_overrides() -> dict[str, Any]:
    """``field=value`` of every shared flag (None = keep the preset's)."""
    return dict(
        dataset=DATASET.value,
        data_dir=DATA_DIR.value,
        backbone=BACKBONE.value,
        vgg_weights=VGG_WEIGHTS.value,
        lite_weights=LITE_WEIGHTS.value,
        image_feature=IMAGE_FEATURE.value,
        image_size=IMAGE_SIZE.value,
        seed=SEED.value,
        max_train_images=MAX_TRAIN_IMAGES.value,
        max_eval_images=MAX_EVAL_IMAGES.value,
        cache_dir=CACHE_DIR.value,
        augment_flip=AUGMENT_FLIP.value,
    )
