"""The YAML-trace datasets of lab notebook 002: the schema-based generator (``generate``: pattern
files in ``patterns/<expert>/``, vocabulary in ``vocab/``) and the GSM8K train converter (``gsm8k``)."""
