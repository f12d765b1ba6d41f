"""``python -m rlm.cli``: the same as the ``rlm`` script."""

from rlm.cli import main

main()
