"""``python -m dungeon`` runs the ``dungeon`` command."""

from dungeon.cli import main

raise SystemExit(main())
