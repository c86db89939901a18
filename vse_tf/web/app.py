"""The web app of ``vse-serve``: a `service.SearchService` behind Starlette routes.

Routes:
    ``GET /``: the search page (`page.PAGE`).
    ``GET /api/search?q=SENTENCE[&k=K][&embedding=1]``: images for a sentence.
    ``GET /api/search?id=ROW[&k=K]``: images like indexed image ``ROW``.
    ``POST /api/search[?k=K][&embedding=1]``: the body is an image file
        (JPEG, PNG, GIF or BMP): similar images, and captions where a caption
        index is served.
    ``GET /thumbnail/ROW``: a JPEG thumbnail of indexed image ``ROW``, only
        of files the index lists and inside the folders it was built from.
    ``GET /api/info``: what is served.

Answers are JSON (`service.SearchService.answer`); a refused request is
``{"error": "one sentence"}`` with 400 (bad query or upload), 404 (no such
item or file), 413 (body over the limit) or 405; a bug is a 500 with the
same shape and the traceback in the server's log. The model runs in
Starlette's thread pool, so one slow query does not hold the others.

Starlette (with uvicorn to run it) is the ``web`` extra: the small ASGI
toolkit FastAPI is built on, well kept, and all this app needs; FastAPI's
validation layer would add a dependency and nothing these four routes use.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vse_tf import errors
from vse_tf.web import page, service

LOGGER = logging.getLogger(__name__)

DEFAULT_K = 12

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {
    **_SECURITY_HEADERS,
    "Cache-Control": "no-cache",
    # Nothing from elsewhere: the page's inline style and script, the
    # server's API and thumbnails, and the blob: preview of an upload.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"
    ),
}


class _BodyTooLarge(Exception):
    pass


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(search: service.SearchService) -> Starlette:
    """The ASGI app serving ``search``.

    Args:
        search: The service (model, indexes, limits).

    Returns:
        A Starlette app (run it with uvicorn, or test it with
        ``starlette.testclient.TestClient``).
    """

    async def home(request: Request) -> Response:
        return HTMLResponse(page.PAGE, headers=_PAGE_HEADERS)

    async def api_search(request: Request) -> Response:
        params = request.query_params
        k = params.get("k", DEFAULT_K)
        embedding = _flag(params.get("embedding"))
        if request.method == "POST":
            try:
                data = await _read_body(request, search.limits.max_upload_bytes)
            except _BodyTooLarge:
                limit = search.limits.max_upload_bytes / 2**20
                return _error(413, f"the upload is over the {limit:g} MiB limit")
            answer = await run_in_threadpool(search.search_upload, data, k, embedding)
        elif "q" in params:
            answer = await run_in_threadpool(
                search.search_text, params["q"], k, embedding
            )
        elif "id" in params:
            answer = await run_in_threadpool(
                search.search_indexed, params["id"], k, embedding
            )
        else:
            raise errors.InputError(
                "give q=SENTENCE or id=RESULT_ID, or POST an image file"
            )
        return JSONResponse(answer, headers=_SECURITY_HEADERS)

    async def thumbnail(request: Request) -> Response:
        jpeg = await run_in_threadpool(search.thumbnail, request.path_params["row"])
        return Response(
            jpeg,
            media_type="image/jpeg",
            headers={**_SECURITY_HEADERS, "Cache-Control": "max-age=600"},
        )

    async def info(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(search.info))

    async def input_error(request: Request, error: Exception) -> Response:
        return _error(400, str(error))

    async def not_found(request: Request, error: Exception) -> Response:
        return _error(404, str(error))

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        messages = {404: "no such page", 405: "method not allowed here"}
        return _error(
            error.status_code, messages.get(error.status_code, str(error.detail))
        )

    async def bug(request: Request, error: Exception) -> Response:
        LOGGER.exception("error serving %s", request.url.path)
        return _error(500, f"internal error ({type(error).__name__}); see the log")

    return Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/api/search", api_search, methods=["GET", "POST"]),
            Route("/api/info", info, methods=["GET"]),
            Route("/thumbnail/{row}", thumbnail, methods=["GET"]),
        ],
        exception_handlers={
            service.NotFound: not_found,
            errors.UserError: input_error,
            HTTPException: http_error,
            Exception: bug,
        },
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=status, headers=_SECURITY_HEADERS
    )
