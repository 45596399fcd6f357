"""``python -m edgebridge.testing make-tiny KIND [options] OUT_DIR``: seeded test models, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgebridge.testing import BUILDERS, make_tiny
from edgebridge.testing.llava import TEXT_MODELS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgebridge.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("make-tiny", help="write a seeded tiny model folder")
    tiny.add_argument("kind", choices=sorted(BUILDERS))
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--vision", default="clip", choices=["clip", "siglip"], help="llava: vision tower")
    tiny.add_argument("--text", default="llama", choices=list(TEXT_MODELS), help="llava: text model")
    tiny.add_argument("--size", default="tiny", choices=["tiny", "bench"], help="llava: tiny (tests) or bench")
    tiny.add_argument("--projector", default="ldpv2", choices=["ldp", "ldpv2"], help="mobilevlm: LDP version")
    tiny.add_argument("--seed", type=int, default=None, help="default: the builder's own (0 for most)")
    args = parser.parse_args(argv)
    options = {"vision": args.vision, "text": args.text, "size": args.size, "projector": args.projector}
    if args.seed is not None:
        options["seed"] = args.seed
    path = make_tiny(args.kind, args.out_dir, **options)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
