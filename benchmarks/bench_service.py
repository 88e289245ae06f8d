"""The Kafka service against a model-free pass-through behind the same loop, on the embedded
broker.

    python benchmarks/bench_service.py [--streams 1,1000,10000] [--events 20000]

is the same as ``streamvgan bench``; see ``streamvgan/tools/bench.py`` for what is measured.
"""

from __future__ import annotations

import sys

from streamvgan.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
