r"""Serves an index in the browser: type a sentence, drop a photo, click a result.

Examples:
    vse-serve --index=idx/photos
    vse-serve --model=models/vse --index=idx/photos --captions=idx/caps --port=8080
    vse-serve --model=http://127.0.0.1:8501 --index=idx/photos

Open http://127.0.0.1:8080/ (``/?q=a+dog+in+snow`` is a search you can
share). The JSON API: ``GET /api/search?q=...&k=10[&embedding=1]``, ``GET
/api/search?id=ROW``, ``POST /api/search`` with an image file as the body
(``curl --data-binary @photo.jpg http://127.0.0.1:8080/api/search``).

--model is an exported version folder, the base folder of numbered versions
(the newest is served), a preset (a folder or ``hf://owner/name``), or a
TF Serving URL (``http://host:8501``,
``grpc://host:8500``); unset, the model the index was built with. The
server binds to 127.0.0.1 (this machine only) unless --host says otherwise.
An index grown with ``vse-index --add`` (or rebuilt) is picked up on the
next request after its manifest changed; ``kill -HUP`` reloads at once.
"""

import os
import re
import signal

from absl import app, flags

from vse_tf import errors, preset
from vse_tf.retrieval import encoders, index_lib
from vse_tf.serving import loader

from . import cli

_MODEL = flags.DEFINE_string(
    "model",
    None,
    "SavedModel version folder, base folder of versions, preset (folder or "
    "hf://owner/name), or TF Serving URL "
    "(default: the model the index was built with).",
)
_INDEX = flags.DEFINE_string("index", None, "Index folder to search.", required=True)
_CAPTIONS = flags.DEFINE_string(
    "captions", None, "A caption index: photo queries also list their captions."
)
_HOST = flags.DEFINE_string(
    "host", "127.0.0.1", "Address to bind (0.0.0.0: every network; think first)."
)
_PORT = flags.DEFINE_integer("port", 8080, "Port.", lower_bound=0, upper_bound=65535)
_ANN = flags.DEFINE_bool(
    "ann", False, "Search the approximate index (vse-index --ann) of the indexes."
)
_MAX_UPLOAD_MB = flags.DEFINE_float(
    "max_upload_mb", 16.0, "Largest uploaded image, in MiB.", lower_bound=0.01
)
_MAX_MEGAPIXELS = flags.DEFINE_float(
    "max_megapixels",
    40.0,
    "Largest uploaded image in megapixels (read from its header before decoding).",
    lower_bound=0.01,
)
_MAX_K = flags.DEFINE_integer("max_k", 100, "Most results per query.", lower_bound=1)

_SERVER_ADDRESS = re.compile(r"[A-Za-z0-9.-]+:\d+")


def _encoder(model: str | None, index_dir: str) -> encoders.Encoder:
    """The model: the flag's, else the one the index records."""
    if not model:
        built = index_lib.read_manifest(index_dir).get("model") or {}
        model = built.get("path") or built.get("server")
        if not model:
            raise errors.UserError(f"{index_dir} names no model: pass --model")
    if model.startswith(("http://", "https://", "grpc://")) or (
        _SERVER_ADDRESS.fullmatch(model) and not os.path.exists(model)
    ):
        return encoders.get_encoder(server=model)
    if preset.names_preset(model):
        return encoders.PresetEncoder(model)
    return encoders.SavedModelEncoder(loader.resolve_version(model))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        import uvicorn

        from vse_tf.web import app as web_app
        from vse_tf.web import service
    except ImportError as error:
        raise errors.UserError(
            f"vse-serve needs the web extra ({error.name} is missing): "
            "pip install 'vse_tf[web]'"
        ) from None
    encoder = _encoder(_MODEL.value, _INDEX.value)
    limits = service.Limits(
        max_upload_bytes=int(_MAX_UPLOAD_MB.value * 2**20),
        max_image_pixels=int(_MAX_MEGAPIXELS.value * 1e6),
        max_k=_MAX_K.value,
    )
    search = service.SearchService(
        encoder, _INDEX.value, _CAPTIONS.value, ann=_ANN.value, limits=limits
    )
    signal.signal(signal.SIGHUP, lambda signum, frame: search.reload())
    index = search.images.index
    host = f"[{_HOST.value}]" if ":" in _HOST.value else _HOST.value
    print(
        f"Serving {len(index)} {index.kind}s of {_INDEX.value} on "
        f"http://{host}:{_PORT.value}/ (Ctrl-C stops)",
        flush=True,
    )
    uvicorn.run(
        web_app.create_app(search),
        host=_HOST.value,
        port=_PORT.value,
        log_level="warning",
        timeout_keep_alive=5,
    )


def run():
    cli.run(main, __doc__, takes_arguments=True)


if __name__ == "__main__":
    run()
