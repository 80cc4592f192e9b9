"""`llmplat …`: one module per command group, the parser and :func:`main` in ``main``.

``serve`` and ``model`` (the local platform), ``teams``/``keys`` (``admin``), ``status``,
``loadtest``, ``plan`` and ``deploy``; what they print goes through ``output``.
"""

from llmplat.cli.main import main

__all__ = ["main"]
