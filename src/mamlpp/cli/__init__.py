"""The ``mamlpp`` command: one module a command (``mamlpp.cli.train`` is ``mamlpp train``), wired
together by :mod:`mamlpp.cli.main`.

A command module imports only argparse-level code at its top and the library inside its
handler, so that ``mamlpp --help`` and ``mamlpp --version`` never import torch (importing torch
costs about 1.5 s on a 2-core CPU; ``python -X importtime -m mamlpp --version`` shows the rest).
"""
