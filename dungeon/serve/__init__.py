"""``dungeon serve``: the engine over HTTP (game API, KoboldAI and OpenAI text APIs, a page).

Importing this package is light; the web framework is imported by ``dungeon.serve.app``.
See docs/serve.md for every endpoint.
"""
