"""Evaluates a trained workdir's best model with the papers' retrieval protocol.

Example:
    python -m trainers.evaluate --workdir=runs/demo --split=test
"""

from absl import app, flags

from vse_tf import train_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
_DATASET = flags.DEFINE_enum(
    "dataset",
    None,
    ["demo", "flickr8k", "karpathy", "coco", "precomp", "csv"],
    "Data set (default: the one trained on).",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Data root (default: the trained one)."
)
_SPLIT = flags.DEFINE_string("split", "dev", "Split to evaluate.")


def main(argv):
    del argv
    train_lib.evaluate_workdir(
        _WORKDIR.value,
        split=_SPLIT.value,
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
    )


if __name__ == "__main__":
    app.run(main)
