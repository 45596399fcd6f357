"""``edgebridge serve``: an OpenAI-compatible local server for a bundle (the ``serve`` extra).

``app.py`` the routes, ``protocol.py`` a request checked and turned into a prompt and media,
``slots.py`` the pipelines and the bounded queue in front of them, ``errors.py`` OpenAI-style errors,
``metrics.py`` the Prometheus counters. ``ARCHITECTURE.md`` lists the rules.
"""

from edgebridge.server.app import ServeOptions, create_app, serve

__all__ = ["ServeOptions", "create_app", "serve"]
