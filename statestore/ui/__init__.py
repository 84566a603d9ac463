"""The read-only web inspector, ``statestore ui``: an ASGI app (Starlette, Jinja2 templates,
no front-end build) over the store's public API, served by uvicorn. Needs the ``ui`` extra
(``pip install 'statestore[ui]'``)."""
