"""The ``kiln`` console script's entry point: the same start-up as ``python -m kiln.cli.main``.

Start-up imports much and frees little, so the cyclic collector stays off until the command
has started (:func:`kiln.cli.main.started` freezes what start-up built and turns it back on).
The Procfile's processes start through here."""

from __future__ import annotations

import gc


def run() -> None:
    gc.disable()
    from kiln.cli.main import main

    main()
