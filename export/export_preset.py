"""Writes a trained workdir's model as a preset folder with its model card.

The folder (``config.json``, ``metadata.json``, ``model.weights.h5``,
``vocab.txt``, ``README.md``) is what you hand to others: load it with
``vse_tf.Embedder.from_preset(FOLDER)``, or publish it to the Hugging Face
Hub (README "Share your model") and load ``hf://OWNER/NAME``. It holds no
path of this machine. Written into a fresh folder beside the target and
renamed into place last.

Example:
    python -m export.export_preset --workdir=runs/lite --output_dir=presets/vse-f8k-lite
"""

from __future__ import annotations

import os

from absl import flags

from vse_tf import preset, preset_writer

from . import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "The preset folder to write.", required=True
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing folder.")


def main(argv):
    del argv
    folder = preset_writer.write_preset(
        _WORKDIR.value, _OUTPUT_DIR.value, overwrite=_OVERWRITE.value
    )
    sizes = {
        name: os.path.getsize(os.path.join(folder, name))
        for name in sorted(os.listdir(folder))
    }
    print(f"Preset written to {folder}:")
    for name, size in sizes.items():
        print(f"  {name:18} {size / 2**20:8.2f} MiB")
    print(
        f"Load it with vse_tf.Embedder.from_preset({folder!r}); the model card "
        f"is {os.path.join(folder, preset.CARD_FILE)}"
    )


def run():
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
