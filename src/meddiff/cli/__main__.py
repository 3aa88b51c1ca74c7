"""``python -m meddiff.cli`` (used by ``accelerate launch -m meddiff.cli``)."""

from meddiff.cli import main

main()
