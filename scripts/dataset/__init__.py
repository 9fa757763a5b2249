"""Trace datasets: builders (GSM8K, reasoning-gym, user files) and tools; run ``python -m scripts.dataset -h``."""
