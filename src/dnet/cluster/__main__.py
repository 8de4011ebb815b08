"""`python -m dnet.cluster ARGS` is `dnet worker ARGS` (how LocalCluster starts its workers)."""
import sys

from dnet.cli.main import main

main(["worker", *sys.argv[1:]])
