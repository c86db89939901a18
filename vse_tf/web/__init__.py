"""``vse-serve``: search an index in the browser, and the JSON API under it.

`service` answers searches, thumbnails and limits without any web framework
(and is tested that way); `app` puts it behind Starlette routes (the ``web``
extra); `page` is the one HTML page, self-contained (no CDN).
"""
