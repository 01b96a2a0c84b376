"""`python -m fkd_core.data describe PATH`: what a data set holds, who is who, how it splits.

    python -m fkd_core.data describe ../shared/data/fkd-yt15/training.csv.gz [--json] [--cache DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fkd_core.config import TrialConfig
from fkd_core.data.cache import Cache, default_cache_dir
from fkd_core.data.dataset import KeypointData
from fkd_core.data.errors import DataError
from fkd_core.data.groups import group_counts
from fkd_core.data.load import SYNTHETIC_SOURCES, load_dataset
from fkd_core.data.splits import three_way_split


def describe(data: KeypointData, cfg: TrialConfig | None = None) -> dict:
    """Summary of a data set: rows, keypoints, complete rows, presence per keypoint, pixels,
    groups, and the sizes and kind of the splits cfg (default: TrialConfig()) would draw."""
    present = torch.isfinite(data.keypoints).all(dim=2).sum(dim=0).tolist()
    cfg = cfg or TrialConfig()
    counts = group_counts(data.groups) if data.groups is not None else np.ones(0, int)
    splits = three_way_split(data, cfg) if len(data) else None
    return {
        "source": data.source,
        "synthetic": data.synthetic,
        "content_hash": data.content_hash,
        "schema": data.schema.name,
        "rows": len(data),
        "keypoints": data.schema.num_keypoints,
        "complete_rows": int(data.complete_mask().sum()),
        "present_per_keypoint": dict(zip(data.schema.keypoints, present)),
        "image_size": list(data.images.shape[-2:]),
        "pixel_range": [int(data.images.min()), int(data.images.max())] if len(data) else [],
        "groups": None if data.groups is None else {
            "count": len(counts), "from": data.groups_from,
            "rows_per_group": {"min": int(counts.min()), "median": float(np.median(counts)),
                               "max": int(counts.max())}},
        "split_kind": splits.kind if splits else None,
        "split_rows": None if splits is None else {
            "train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
            "test_fraction": cfg.test_fraction, "val_fraction": cfg.val_fraction, "test_seed": cfg.test_seed},
    }


def cache_status(source: str, cache_dir: str | None = None, image_size: int = 96) -> str:
    """"hit", "miss" or "n/a" (synthetic data is generated in memory, never cached). A file that
    cannot be read is a "miss" here: loading it then says why, in one line."""
    if source in SYNTHETIC_SOURCES:
        return "n/a (synthetic, generated in memory)"
    store = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    path = Path(source)
    try:
        if path.is_file():
            digest = store.known_digest(path) or hashlib.sha256(path.read_bytes()).hexdigest()
            if store.entry(digest, image_size).is_file():
                return f"hit ({store.entry(digest, image_size)})"
    except OSError:
        pass
    return f"miss (parsed now, cached under {store.root})"


def _print_text(info: dict) -> None:
    label = "SYNTHETIC faces" if info["synthetic"] else "file"
    print(f"{label}: {info['source']}  (sha256 {info['content_hash'][:16]}...)")
    print(f"rows: {info['rows']}   keypoints: {info['keypoints']} ({info['schema']})   "
          f"complete rows: {info['complete_rows']}")
    print(f"image size: {info['image_size'][0]}x{info['image_size'][1]}   pixel range: {info['pixel_range']}")
    print(f"cache: {info['cache']}")
    groups = info["groups"]
    if groups is None:
        print("groups: none (no groups file): splits are row-level, frames of one person may be on two sides")
    else:
        per = groups["rows_per_group"]
        print(f"groups: {groups['count']} from {groups['from']}; rows per group "
              f"{per['min']}-{per['max']} (median {per['median']:g})")
    if info["split_rows"]:
        s = info["split_rows"]
        print(f"splits ({info['split_kind']}): train {s['train']}, validation {s['val']}, test {s['test']} rows "
              f"(test_fraction {s['test_fraction']:g}, val_fraction {s['val_fraction']:g}, test_seed {s['test_seed']})")
    print("present per keypoint:")
    width = max(len(k) for k in info["present_per_keypoint"])
    for name, count in info["present_per_keypoint"].items():
        print(f"  {name:<{width}}  {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fkd_core.data", description="Inspect keypoint data sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="rows, keypoints, presence, pixel range, groups, splits, cache status")
    d.add_argument("path", help="Kaggle CSV (.csv/.csv.gz/.zip), image-folder CSV, or 'synthetic'")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.add_argument("--cache", default=None, help="cache folder (default: $FKD_CACHE_DIR or ~/.cache/fkd-sweep)")
    d.add_argument("--images", default=None, help="image folder of an image-folder CSV")
    d.add_argument("--image-size", type=int, default=96, help="side of the network input")
    d.add_argument("--groups", default="auto", help="auto (sidecar <name>.groups.csv / file names), none, or a CSV")
    d.add_argument("--group-regex", default="", help="image folders: regex whose first group names the person")
    d.add_argument("--test-fraction", type=float, default=TrialConfig.test_fraction, help="share of groups for test")
    args = parser.parse_args(argv)
    try:
        cfg = TrialConfig(groups=args.groups, group_regex=args.group_regex, test_fraction=args.test_fraction)
        status = cache_status(args.path, args.cache, args.image_size)
        data = load_dataset(args.path, image_size=args.image_size, cache_dir=args.cache, image_dir=args.images,
                            groups=args.groups, group_regex=args.group_regex)
        info = describe(data, cfg) | {"cache": status}
    except (DataError, ValueError) as exc:  # users get the one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    else:
        _print_text(info)
    return 0
