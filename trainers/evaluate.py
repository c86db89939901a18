"""Scores a trained model with the papers' retrieval protocol and prints the table.

Give one of:
  --workdir       a training workdir (its best checkpoint; cached CNN
                  features; writes <workdir>/metrics_<split>.json); several,
                  comma-separated, score their ensemble (the mean of their
                  cosines; nothing written);
  --saved_model   an exported SavedModel (a version folder, or the base
                  path of numbered versions: the newest);
  --server        a TF Serving address (http://host:8501 or host:8500).
An export or a server sees each image as its file's bytes, as in
deployment; the data come from --preset and the data flags.

Examples:
    python -m trainers.evaluate --workdir=runs/demo --split=test
    python -m trainers.evaluate --workdir=runs/f8k_ft,runs/f8k_ft_seed1
    python -m trainers.evaluate --saved_model=models/vse --split=test
    python -m trainers.evaluate --saved_model=models/f8k/1 --preset=flickr8k_lite \\
        --dataset=flickr8k --data_dir=../shared/data/flickr8k
"""

from absl import flags

from vse_tf import api, errors, evaluation
from vse_tf import config as config_lib
from vse_tf import workdir as workdir_lib

from . import cli

cli.define_config_flags(sections=("data",))
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Training workdir, or a preset (a folder or hf://owner/name); several, "
    "comma-separated: their ensemble (mean cosine).",
)
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "Exported SavedModel (version folder or base path)."
)
_SERVER = flags.DEFINE_string("server", None, "TF Serving URL (REST or gRPC).")
_FLIP_AVERAGE = flags.DEFINE_boolean(
    "flip_average",
    None,
    "With --workdir: score each image with its mirror image too (their "
    "embeddings averaged; default: as trained).",
)
_MODEL_NAME = flags.DEFINE_string("model_name", "vse", "Model name on --server.")
_SPLIT = flags.DEFINE_enum("split", "dev", ["dev", "test"], "Split to evaluate.")
_PROJECTOR = flags.DEFINE_string(
    "projector",
    None,
    "Also write the split's images and captions for TensorBoard's Embedding "
    "Projector into this folder (with --workdir): tensorboard --logdir DIR.",
)
cli.group("Model to score (one of)", "workdir", "saved_model", "server", "model_name")
cli.group("Output", "split", "projector", "flip_average")
_PRINT_CONFIG = cli.define_print_config()


def main(argv):
    del argv
    sources = ("workdir", "saved_model", "server")
    given = [name for name in sources if cli.FLAGS[name].value]
    if len(given) != 1:
        raise errors.ConfigError(
            "give exactly one of --workdir, --saved_model and --server"
        )
    if _WORKDIR.value:
        # The trained config's data options, unless a data flag was given.
        honoured = ("dataset", "data_dir", "max_eval_images")
        ignored = [name for name in cli.given_config_flags() if name not in honoured]
        if ignored:
            raise errors.ConfigError(
                f"--{ignored[0]} has no effect with --workdir: the workdir's "
                "config.json decides; drop it (with --workdir only --dataset, "
                "--data_dir and --max_eval_images apply)"
            )
        changed = cli.given_values(honoured)
        members = [w for w in _WORKDIR.value.split(",") if w]
        if len(members) > 1:
            if _PROJECTOR.value or _PRINT_CONFIG.value:
                raise errors.ConfigError(
                    "--projector and --print_config take one --workdir"
                )
            evaluation.evaluate_ensemble(
                members,
                split=_SPLIT.value,
                flip_average=_FLIP_AVERAGE.value,
                **changed,
            )
            return
        if _PRINT_CONFIG.value:
            config = workdir_lib.read_workdir_config(_WORKDIR.value)
            cli.print_config_and_exit(config_lib.override(config, **changed))
        evaluation.evaluate_workdir(
            _WORKDIR.value,
            split=_SPLIT.value,
            projector_dir=_PROJECTOR.value,
            flip_average=_FLIP_AVERAGE.value,
            **changed,
        )
        if _PROJECTOR.value:
            print(
                f"Projector files in {_PROJECTOR.value}: "
                f"tensorboard --logdir {_PROJECTOR.value}"
            )
        return
    if _FLIP_AVERAGE.value is not None:
        raise errors.ConfigError(
            "--flip_average takes --workdir (an export averages the views when "
            "its workdir was trained with --flip_average)"
        )
    if _PROJECTOR.value:
        raise errors.ConfigError(
            "--projector takes --workdir (an export or a server has no split "
            "embeddings here yet)"
        )
    config = cli.config_from_flags()
    if _PRINT_CONFIG.value:
        cli.print_config_and_exit(config)
    if _SAVED_MODEL.value:
        embedder = api.Embedder.from_saved_model(_SAVED_MODEL.value)
    else:
        embedder = api.Embedder.from_server(_SERVER.value, model_name=_MODEL_NAME.value)
    evaluation.evaluate_embedder(embedder, config, _SPLIT.value)


def run():
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
