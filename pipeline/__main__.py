"""``python -m pipeline`` works like ``candles``."""

from pipeline.cli import main

main()
