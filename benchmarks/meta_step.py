"""Seconds per meta-iteration, FLOP rate against a large matmul, peak memory (studies.bench).

python benchmarks/meta_step.py --configs omniglot-20w1s --paths batched,loop --json out.json
"""

import argparse
import sys

from mamlpp.cli.bench import add_arguments, options_from
from mamlpp.studies.bench import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(options_from(parser.parse_args())))
