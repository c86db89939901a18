"""Trains a visual-semantic embedding, selects it on dev, prints the retrieval table.

Examples:
    python -m trainers.train                       # the embedded demo
    python -m trainers.train --preset=flickr8k --dataset=flickr8k \\
        --data_dir=../shared/data/flickr8k --workdir=runs/f8k
"""

from absl import app, flags

from trainers import common_flags
from vse_tf import config as config_lib
from vse_tf import train_lib

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (default runs/<preset>)."
)
_EMBED_DIM = flags.DEFINE_integer("embed_dim", None, "Joint embedding size D.")
_WORD_DIM = flags.DEFINE_integer("word_dim", None, "Word vector size (without GloVe).")
_GLOVE = flags.DEFINE_string("glove", None, "kumo-6b-50d|PATH|none.")
_LOSS = flags.DEFINE_enum(
    "loss",
    None,
    ["sum", "max", "sum_then_max", "infonce"],
    "Loss: sum or max of hinges, sum for --warmup_epochs then max, or the "
    "symmetric softmax contrastive loss (InfoNCE, learnt temperature).",
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", None, "Initial InfoNCE temperature (--loss=infonce)."
)
_FEATURE_NORM = flags.DEFINE_enum(
    "feature_norm", None, ["l2", "batchnorm", "none"], "CNN feature normalisation."
)
_TEXT_RNN = flags.DEFINE_enum(
    "text_rnn", None, ["lstm", "gru"], "Text tower recurrent layer."
)
_TRAIN_WORD_EMBEDDINGS = flags.DEFINE_bool(
    "train_word_embeddings", None, "Fine-tune the (GloVe) word vectors."
)
_WARMUP_EPOCHS = flags.DEFINE_integer(
    "warmup_epochs", None, "Epochs of sum before max (sum_then_max)."
)
_LR_DECAY_EPOCHS = flags.DEFINE_integer(
    "lr_decay_epochs", None, "Learning rate x0.1 after N epochs (0 = never)."
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    None,
    ["one_device", "mirrored", "multi_worker", "tpu"],
    "tf.distribute strategy (multi_worker reads TF_CONFIG).",
)
_TEXT_COMPUTE_DTYPE = flags.DEFINE_enum(
    "text_compute_dtype",
    None,
    ["auto", "float32", "bfloat16"],
    "Training LSTM matmuls (auto: bfloat16 where the hardware has it).",
)
_JIT_COMPILE_TEXT = flags.DEFINE_bool(
    "jit_compile_text", None, "Compile the training text tower with XLA."
)
_BUCKET_BY_LENGTH = flags.DEFINE_bool(
    "bucket_by_length", None, "Batch captions of similar length together."
)
_SKIP_BAD_EXAMPLES = flags.DEFINE_bool(
    "skip_bad_examples",
    None,
    "Train on the good examples when the annotations have problems "
    "(default: stop and list every problem).",
)
_MARGIN = flags.DEFINE_float("margin", None, "Hinge margin.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Pairs per batch.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Adam learning rate.")
_FINE_TUNE_FROM = flags.DEFINE_string(
    "fine_tune_from", None, "e.g. block5; '' = frozen."
)


def main(argv):
    del argv
    config = config_lib.override(
        common_flags.base_config(),
        embed_dim=_EMBED_DIM.value,
        word_dim=_WORD_DIM.value,
        glove=_GLOVE.value,
        loss=_LOSS.value,
        temperature=_TEMPERATURE.value,
        warmup_epochs=_WARMUP_EPOCHS.value,
        feature_norm=_FEATURE_NORM.value,
        train_word_embeddings=_TRAIN_WORD_EMBEDDINGS.value,
        text_rnn=_TEXT_RNN.value,
        lr_decay_epochs=_LR_DECAY_EPOCHS.value,
        strategy=_STRATEGY.value,
        text_compute_dtype=_TEXT_COMPUTE_DTYPE.value,
        jit_compile_text=_JIT_COMPILE_TEXT.value,
        bucket_by_length=_BUCKET_BY_LENGTH.value,
        skip_bad_examples=_SKIP_BAD_EXAMPLES.value,
        margin=_MARGIN.value,
        batch_size=_BATCH_SIZE.value,
        epochs=_EPOCHS.value,
        learning_rate=_LEARNING_RATE.value,
        fine_tune_from=_FINE_TUNE_FROM.value,
    )
    workdir = _WORKDIR.value or f"runs/{common_flags.PRESET.value}"
    train_lib.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    app.run(main)
