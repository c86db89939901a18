"""Cached, resumable CNN feature extraction, one job per module.

With a frozen CNN (VGG16 or EfficientNet-Lite) the image features never
change, so they are computed once per (backbone, weights, feature, image
size, precision, image list) and stored under the cache directory; training
epochs then never run the CNN.

Cache layout (one folder per key and image list)::

    <cache>/features/<key id>/<list id>/
        manifest.json       backbone, weights (fingerprint + sha256), feature,
                            input size, preprocessing and resize, requested
                            and used dtype, bf16 agreement, image-list sha256,
                            shard size, one entry per finished shard (image
                            range, rows, file, sha256, skipped images with
                            reasons), ``complete``
        shard-00000.npy     float32 [rows, F]: the features of the shard's
        shard-00001.npy     readable images, in image order
        ...

The shards are a `vse_tf.shard_store` store: every file is written to a
temporary name and renamed into place, a shard before the manifest entry
that names it. An interrupted extraction run again
continues after the last complete shard; a shard whose bytes do not match
the manifest's sha256 (truncated, overwritten, flipped bytes) or whose shape
is wrong is recomputed, never read as features.

Images that cannot be read or decoded (missing, empty, truncated, not an
image) are skipped, never a crash: their rows are zero, ``valid`` is False
and the manifest lists each with the reason.

Modules (each imports only those above it, and `vse_tf.images` for pixels):

* `cache`: cache keys, folders and manifests (nothing runs a model).
* `report`: `FeatureReport`, `SkippedImage`, why an image was skipped.
* `extractor`: the backbone over image shards, in the precision agreed.
* `extraction`: `run_extraction` / `extract_features_with_report`.
* `settings`: the features of a config and of a split (`split_features`).
"""
