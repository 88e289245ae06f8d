"""The ``streamvgan`` command line: ``serve``, ``demo``, ``broker``, ``replay``, ``bench``,
``evaluate``. Each group of subcommands lives beside the code it drives and registers itself
here through a ``register(subparsers)`` function, so this file stays a table of contents."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from streamvgan._version import __version__

log = logging.getLogger("streamvgan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamvgan",
        description="Anomaly scores, forecasts and synthetic continuations for many time "
        "series at once, from an online recurrent VAE-GAN.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="level of streamvgan's own log (DEBUG, INFO, WARNING); libraries such as "
        "kafka-python log at WARNING unless this is DEBUG. Default: INFO",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Imported here, not at module level, so `streamvgan --help` stays fast and a missing
    # optional piece only breaks its own subcommand.
    from streamvgan.service import commands as service_commands

    service_commands.register(sub)
    from streamvgan.tools import commands as tools_commands

    tools_commands.register(sub)
    from streamvgan.pretrain import commands as pretrain_commands

    pretrain_commands.register(sub)
    from streamvgan.eval import commands as eval_commands

    eval_commands.register(sub)
    return parser


def configure_logging(level_name: str) -> None:
    """Our loggers (``streamvgan.*``) at ``level_name``; every library's (``kafka.*``, ...) at
    WARNING unless ``level_name`` is DEBUG: at INFO kafka-python alone wrote 268 of the
    demo's 371 lines. Leaves logging alone when the host process has set it up (tests, an
    application embedding the CLI)."""
    level = getattr(logging, str(level_name).upper(), None)
    if not isinstance(level, int):
        raise SystemExit(
            f"streamvgan: --log-level {level_name!r} is not a logging level; "
            "use DEBUG, INFO, WARNING or ERROR"
        )
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(
        level=logging.DEBUG if level <= logging.DEBUG else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
