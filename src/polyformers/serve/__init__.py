"""``polyformers serve``: an OpenAI-compatible HTTP server with continuous batching.

- :mod:`.protocol`: request validation, OpenAI's error object and response bodies (no framework);
- :mod:`.scheduler`: the continuous-batching scheduler over a slot cache, one per generative model;
- :mod:`.models`: loading checkpoints and deciding what each serves (completions, chat, embeddings);
- :mod:`.app`: the routes, as a Starlette (ASGI) application;
- :mod:`.cli`: the ``serve`` subcommand (uvicorn).

Importing this package imports nothing heavy; the server's own dependencies (``pip install
'polyformers[serve]'``: uvicorn, starlette, jinja2) are imported by the modules that need them.
"""
