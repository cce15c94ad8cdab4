"""mxft-prepare IMAGE_DIR OUT_PREFIX: pack an image folder into train/val .rec files (the CLI)."""
from __future__ import annotations

import argparse
import os
import sys

from cluster.errors import InputError
from launcher.data import extras
from launcher.data.prepare import PrepareSpec, pack_images
from launcher.report.console import Console

DESCRIPTION = """\
Pack a folder of images (one sub-folder per class) into train and validation .rec files
for mxft-launch, as MXNet's im2rec.py does: a random split per class, images resized and
re-encoded as JPEG.

example:
  mxft-prepare 256_ObjectCategories data/caltech-256-60 --exclude 257.clutter"""

EPILOG = "exit codes: 0 done; 1 done, but some class has no training image left; 2 bad input"


def parse_args(argv: list[str] | None) -> PrepareSpec:
    parser = argparse.ArgumentParser(prog="mxft-prepare", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_dir", help="folder with one sub-folder of images per class")
    parser.add_argument("out_prefix", help="writes OUT_PREFIX-{train,val}.{rec,idx,lst}, -labels.txt, -summary.json")
    parser.add_argument("--train-per-class", type=int, default=60, metavar="N",
                        help="random images per class for training, the rest for validation (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and order (default 0)")
    parser.add_argument("--resize", type=int, default=256, metavar="PX",
                        help="shorter edge in pixels, 0 keeps the size (default 256)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    parser.add_argument("--exclude", action="append", default=[], metavar="CLASS",
                        help="leave out this class folder (repeatable), e.g. 257.clutter")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    args = parser.parse_args(argv)
    for name, value, low, high in (("--train-per-class", args.train_per_class, 1, None),
                                   ("--resize", args.resize, 0, None), ("--quality", args.quality, 1, 100),
                                   ("--workers", args.workers, 1, None)):
        if value < low or (high is not None and value > high):
            parser.error(f"{name} must be {'between %d and %d' % (low, high) if high else f'>= {low}'}")
    return PrepareSpec(args.image_dir, args.out_prefix, args.train_per_class, args.seed, args.resize, args.quality,
                       tuple(args.exclude), args.workers)


def main(argv: list[str] | None = None) -> int:
    spec = parse_args(argv)
    console = Console(sys.stderr)
    try:
        extras.require("cv2", package="opencv-python-headless", extra="prepare", needed_for="mxft-prepare",
                       source="mxft-prepare")
        summary = pack_images(spec, progress=lambda done, total: console.progress("packing", done, total,
                                                                                  unit="image"))
    except InputError as err:
        print(f"mxft-prepare: error: {err}", file=sys.stderr)
        return 2
    finally:
        console.close()
    for name in ("train", "val"):
        part = summary[name]
        print(f"{spec.out_prefix}-{name}.rec: {part['images']} images, {part['bytes'] / 1e6:.1f} MB")
        for path in part["unreadable"]:
            print(f"  skipped unreadable image {os.path.join(spec.image_dir, path)}")
    for name, count in summary["short_classes"].items():
        print(f"  class {name} has only {count} images: all for training, none for validation")
    print(f"{summary['classes']} classes in {summary['seconds']:.1f} s ({summary['images_per_s']:.0f} images/s); "
          f"labels in {spec.out_prefix}-labels.txt")
    if summary["classes_without_training_images"]:
        print(f"mxft-prepare: error: no readable training image in class(es) "
              f"{', '.join(summary['classes_without_training_images'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
