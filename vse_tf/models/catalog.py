"""The backbones, their image features and sizes: names and checks, no model code.

What a config may name (``backbone``, ``image_feature``) and the feature
size F each gives, readable without importing Keras: `vse_tf.config` checks a
config with it, and `vse_tf.models.backbone` builds what it names.
"""

from __future__ import annotations

from typing import Optional

VGG16 = "vgg16"
LITE_VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""The EfficientNet-Lite trunks (`vse_tf.models.efficientnet_lite.VARIANTS`)."""
LITE_HEAD_CHANNELS = 1280
BACKBONES = (VGG16, *LITE_VARIANTS)
VGG_FEATURES = ("fc7", "pool5", "pool5_max", "pool5_avgmax")
LITE_FEATURES = ("head_avg", "head_max", "head_avgmax")
IMAGE_FEATURES = VGG_FEATURES + LITE_FEATURES
FEATURE_DIMS = {"fc7": 4096, "pool5": 512, "pool5_max": 512, "pool5_avgmax": 1024}
_LITE_DIMS = {
    "head_avg": LITE_HEAD_CHANNELS,
    "head_max": LITE_HEAD_CHANNELS,
    "head_avgmax": 2 * LITE_HEAD_CHANNELS,
}
PREPROCESSING = {
    VGG16: "rgb 0..255 -> resize SxS (aspect not kept) -> bgr - caffe mean",
    "lite": "rgb 0..255 -> resize SxS (aspect not kept) -> (rgb - 127) / 128",
}


def _check_name(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(
            f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}"
        )


def image_features(backbone: str) -> tuple[str, ...]:
    """The ``image_feature`` values a backbone offers."""
    _check_name(backbone)
    return VGG_FEATURES if backbone == VGG16 else LITE_FEATURES


def default_image_feature(backbone: str) -> str:
    """``pool5`` for VGG16, ``head_avg`` for EfficientNet-Lite."""
    return image_features(backbone)[1 if backbone == VGG16 else 0]


def feature_dim(backbone: str, image_feature: str) -> int:
    """F, the size of the backbone's feature vector."""
    check_backbone(backbone, image_feature)
    return FEATURE_DIMS.get(image_feature) or _LITE_DIMS[image_feature]


def preprocessing(backbone: str) -> str:
    """What the backbone does to pixels, for feature-cache keys."""
    return PREPROCESSING[VGG16 if backbone == VGG16 else "lite"]


def weights_for(backbone: str, vgg_weights: str, lite_weights: str) -> str:
    """The weights setting that applies to ``backbone``."""
    return vgg_weights if backbone == VGG16 else lite_weights


def check_backbone(
    backbone: str,
    image_feature: str,
    image_size: Optional[int] = None,
    weights: Optional[str] = None,
) -> None:
    """Refuses combinations that do not exist, saying what to use instead.

    Raises:
        ValueError: e.g. ``fc7`` with EfficientNet-Lite, ``fc7`` away from
            224x224, or ``fc7`` with weights that have no fc6/fc7.
    """
    _check_name(backbone)
    offered = image_features(backbone)
    if image_feature not in offered:
        raise ValueError(
            f"image_feature={image_feature!r} does not exist for backbone "
            f"{backbone!r}; choose from {', '.join(offered)}"
        )
    if image_size is not None and image_size < 32:
        raise ValueError(f"{backbone} needs images of at least 32x32, got {image_size}")
    if image_feature == "fc7":
        if image_size is not None and image_size != 224:
            raise ValueError("image_feature='fc7' needs image_size=224; use 'pool5'")
        if weights == "hed":
            raise ValueError(
                "image_feature='fc7' with vgg_weights='hed': the HED trunk has no "
                "fc6/fc7 weights (they would stay random); use image_feature="
                "'pool5_avgmax' or vgg_weights='imagenet'"
            )
