import sys

from mamlpp.cli.main import main

sys.exit(main())
