"""OpenAI-compatible HTTP serving over the branching engine.

- ``protocol``: request validation, response / chunk bodies, OpenAI-style errors.
- ``batcher``: the background loop that batches concurrent requests into one engine call.
- ``app``: requests -> engine jobs -> bodies, incremental text for streaming.
- ``http``: the standard-library HTTP server and routes.
- ``command``: ``parallel-r1 serve``.
"""

from importlib import import_module

_EXPORTS = {"APIError": "protocol", "Limits": "protocol", "OpenAIServer": "http", "ServeApp": "app",
            "ServeOptions": "app"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy: ``parallel-r1 --help`` must not import torch through the serve command's package
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
