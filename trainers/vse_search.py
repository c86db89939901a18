r"""Searches an index made by `vse-index`: text -> images, image -> captions.

Examples:
    vse-search --index=idx/photos --model=models/vse/1 "a dog runs on the beach" -k 10
    vse-search --index=idx/caps --model=models/vse/1 --image=photo.jpg
    vse-search --index=idx/photos --server=http://127.0.0.1:8501 "a dog" \
        --html=results.html

Prints ``rank<TAB>score<TAB>item`` lines, best first. With --ann the
index's approximate (FAISS) index is searched (``vse-index --ann`` builds
it), its candidates re-ranked exactly. When --model and
--server are both absent, the model the index was built with is used.
"""

import os

from absl import app, flags

from vse_tf.retrieval import ann_index, index_lib
from vse_tf.retrieval import encoders as index_encoders
from vse_tf.retrieval import html as html_lib

from . import cli

_INDEX = flags.DEFINE_string("index", None, "Index folder.", required=True)
_MODEL = flags.DEFINE_string(
    "model", None, "SavedModel version folder (default: the index's model)."
)
_SERVER = flags.DEFINE_string(
    "server", None, "TF Serving URL instead of --model (http://h:8501 or h:8500)."
)
_K = flags.DEFINE_integer("k", 10, "Number of results.", lower_bound=1)
_IMAGE = flags.DEFINE_string("image", None, "Query image (instead of query text).")
_HTML = flags.DEFINE_string("html", None, "Also write the results to this page.")
_ANN = flags.DEFINE_bool(
    "ann", False, "Search the approximate index (vse-index --ann) instead of all."
)
_EMBED = flags.DEFINE_bool(
    "embed_images", True, "Embed thumbnails in the page (else relative links)."
)


def main(argv):
    query = " ".join(argv[1:]).strip()
    if bool(query) == bool(_IMAGE.value):
        raise app.UsageError("give either query text or --image=FILE")
    load = ann_index.load_index if _ANN.value else index_lib.load_index
    index = load(_INDEX.value)
    model = _MODEL.value
    if not model and not _SERVER.value:
        model = index.manifest["model"].get("path")
        if not model:
            raise app.UsageError("the index was built by a server: pass --server")
    encoder = index_encoders.get_encoder(
        None if _SERVER.value else model, _SERVER.value
    )
    if _IMAGE.value:
        results = index_lib.search_image(index, encoder, _IMAGE.value, _K.value)
    else:
        results = index_lib.search_text(index, encoder, query, _K.value)
    for rank, (item, score) in enumerate(results, start=1):
        print(f"{rank}\t{score:.4f}\t{item}")
    if _HTML.value:
        html_lib.render_results_html(
            query or os.path.basename(_IMAGE.value),
            results,
            _HTML.value,
            embed_images=_EMBED.value,
            query_image=_IMAGE.value,
            result_kind="image" if index.kind == "image" else "caption",
        )
        print(f"Results page written to {_HTML.value}")


def run():
    cli.run(main, __doc__, takes_arguments=True)


if __name__ == "__main__":
    run()
