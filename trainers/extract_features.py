"""Precomputes the CNN features a training run will read from the feature cache.

Takes the config flags of `trainers.train` (not --workdir: it writes only
the cache), so with the same flags the cache key is the same and training
then finds every feature already there. The cache is sharded: an
interrupted run, started again, continues after the last complete shard;
unreadable images are skipped and listed in the manifest.

With ``--runner`` set to a Beam runner the same cache entries are computed
by an Apache Beam pipeline (local worker processes, or Dataflow, Flink,
Spark: see the README's "Millions of images"); Beam's own flags follow
``--pipeline_options`` or ``--``.

Examples:
    python -m trainers.extract_features --preset=flickr8k_lite --dataset=flickr8k \\
        --data_dir=../shared/data/flickr8k
    python -m trainers.extract_features --preset=tiny --splits=train,dev
    python -m trainers.extract_features --preset=tiny --runner=DirectRunner -- \\
        --direct_running_mode=multi_processing --direct_num_workers=2
"""

from absl import app, flags

from vse_tf import train_lib

from . import cli

cli.define_config_flags()
_SPLITS = flags.DEFINE_list(
    "splits", ["train", "dev", "test"], "Splits to extract (a missing test is skipped)."
)
cli.group("Output", "splits")
_RUNNER, _PIPELINE_OPTIONS = cli.define_runner_flags()
_PRINT_CONFIG = cli.define_print_config()


def main(argv):
    if len(argv) > 1 and _RUNNER.value == "local":
        raise app.UsageError(
            f"unexpected arguments {argv[1:]}: Beam options need a Beam --runner"
        )
    config = cli.config_from_flags()
    if _PRINT_CONFIG.value:
        cli.print_config_and_exit(config)
    train_lib.extract_split_features(
        config,
        _SPLITS.value,
        runner=_RUNNER.value,
        pipeline_options=cli.pipeline_options(_PIPELINE_OPTIONS, argv),
    )


def run():
    cli.run(main, __doc__, takes_arguments=True)


if __name__ == "__main__":
    run()
