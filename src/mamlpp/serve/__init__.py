"""A trained model behind a small HTTP API and web page (``mamlpp serve``; see docs/serve.md).

Needs the optional extra: ``pip install "mamlpp[serve]"`` (FastAPI, uvicorn, python-multipart).
Import :func:`mamlpp.serve.app.create_app` to embed the API in another ASGI program.
"""
