"""Trains a visual-semantic embedding, selects it on dev, prints the retrieval table.

Every config field is a flag; each defaults to the --preset's value.

Examples:
    python -m trainers.train                       # the embedded demo
    python -m trainers.train --preset=flickr8k_lite --dataset=flickr8k \\
        --data_dir=../shared/data/flickr8k --workdir=runs/f8k_lite
    python -m trainers.train --preset=flickr8k --print_config
"""

from absl import flags

from vse_tf import train_lib

from . import cli

cli.define_config_flags()
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Output folder: checkpoints, logs, metrics (default runs/<preset>).",
)
cli.group("Output", "workdir")
_PRINT_CONFIG = cli.define_print_config()


def main(argv):
    del argv
    config = cli.config_from_flags()
    if _PRINT_CONFIG.value:
        cli.print_config_and_exit(config)
    workdir = _WORKDIR.value or f"runs/{cli.FLAGS.preset}"
    train_lib.train_and_evaluate(config, workdir)


def run():
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
