"""``python -m scripts.sweep`` with the fast stand-in trainer registered (for the sweep tests only).

python -m tests.sweep_driver --config SWEEP.yaml [key=value ...]
"""

from __future__ import annotations

from scripts.sweep import TRAINERS, Trainer, main

TRAINERS["tests.sweep_trainer"] = Trainer("tests.sweep_trainer:FakeConfig", ("valid_loss",))

if __name__ == "__main__":
    raise SystemExit(main())
