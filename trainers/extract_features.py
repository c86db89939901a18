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

from trainers import common_flags
from vse_tf import config as config_lib
from vse_tf import train_lib

_SPLITS = flags.DEFINE_list(
    "splits", ["train", "dev", "test"], "Splits to extract (a missing test is skipped)."
)
_EXTRACT_BATCH_SIZE = flags.DEFINE_integer(
    "extract_batch_size", None, "Images per CNN call (does not change the cache key)."
)


def main(argv):
    del argv
    config = config_lib.override(
        common_flags.base_config(), extract_batch_size=_EXTRACT_BATCH_SIZE.value
    )
    train_lib.extract_split_features(config, _SPLITS.value)


if __name__ == "__main__":
    app.run(main)
