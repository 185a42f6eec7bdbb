"""``python -m netlab``: the same as the ``netlab`` command."""

from __future__ import annotations

from netlab.cli import main

raise SystemExit(main())
