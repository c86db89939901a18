"""Precomputes the CNN features a training run will read from the feature cache.

Takes the config flags of `trainers.train` (not --workdir: it writes only
the cache), so with the same flags the cache key is the same and training
then finds every feature already there. The cache is sharded: an
interrupted run, started again, continues after the last complete shard;
unreadable images are skipped and listed in the manifest.

Examples:
    python -m trainers.extract_features --preset=flickr8k_lite --dataset=flickr8k \\
        --data_dir=../shared/data/flickr8k
    python -m trainers.extract_features --preset=tiny --splits=train,dev
"""

from absl import flags

from trainers import cli
from vse_tf import train_lib

cli.define_config_flags()
_SPLITS = flags.DEFINE_list(
    "splits", ["train", "dev", "test"], "Splits to extract (a missing test is skipped)."
)
cli.group("Output", "splits")
_PRINT_CONFIG = cli.define_print_config()


def main(argv):
    del argv
    config = cli.config_from_flags()
    if _PRINT_CONFIG.value:
        cli.print_config_and_exit(config)
    train_lib.extract_split_features(config, _SPLITS.value)


def run():
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
