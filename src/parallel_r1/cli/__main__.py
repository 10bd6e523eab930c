"""``python -m parallel_r1.cli``: the same as the ``parallel-r1`` console script."""

from parallel_r1.cli import main

main()
