"""``python -m scripts.dataset <subcommand>``; see ``scripts.dataset.cli``."""

from scripts.dataset.cli import main

raise SystemExit(main())
