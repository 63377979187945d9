"""``rgbd-codec``: one command, several sub-commands.

Each sub-command family lives in its own module with ``add_parsers(subparsers)``;
a parser sets ``func`` to a callable taking the parsed args and returning an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# module -> what it provides; a missing module is an installation error, never skipped
_COMMAND_MODULES = (
    "rgbd_codec_ros.cli.codec_cmds",   # encode, decode, info
    "rgbd_codec_ros.cli.train_cmds",   # train, eval, export, curve
    "rgbd_codec_ros.cli.bag_cmds",     # bag compress|decompress|info|record|play|from-images
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbd-codec", description="Joint RGB-D compression: encode, decode, train, evaluate, bags.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from rgbd_codec_ros.codec.base import CodecError
    try:
        return int(args.func(args) or 0)
    except CodecError as exc:
        print(f"rgbd-codec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"rgbd-codec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        # CPython quirk: a KeyboardInterrupt that passed through code run by a string exec/eval
        # (rosbags' generated (de)serialisers) sets a runtime flag that makes `python -m` kill
        # itself with SIGINT at exit even though the interrupt was handled here (exit status -2
        # instead of 130). Every string exec clears that flag first, so run an empty one.
        exec("pass")
        return 130


if __name__ == "__main__":
    sys.exit(main())
