#!/usr/bin/env python3
"""Export a training checkpoint (model state dict under "model") as finished codec weights.

    python scripts/export_weights.py CHECKPOINT OUT.pt --preset lite [--variant joint] --name NAME
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rgbd_codec_ros.codec.learned.model import build_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--variant", default="joint")
    ap.add_argument("--name", required=True)
    ap.add_argument("--meta", default="{}", help="extra metadata as JSON")
    args = ap.parse_args()
    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model = build_model(args.preset, args.variant)
    model.load_state_dict(ck["model"] if "model" in ck else ck)
    model.eval()
    meta = dict(json.loads(args.meta), name=args.name, steps=ck.get("step"))
    print(model.export_weights(args.out, meta))


if __name__ == "__main__":
    main()
