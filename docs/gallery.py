"""Copy the demo's figures into docs/gallery/ for the README, as palette PNGs (256 colours,
optimised) so each stays well under 300 KB.

    python docs/gallery.py [demo-output/figures] [docs/gallery]        # what `make gallery` runs
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

GALLERY = Path(__file__).resolve().parent / "gallery"
LIMIT = 300_000  # bytes a committed figure may take


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output/figures")
    target_folder = Path(sys.argv[2]) if len(sys.argv) > 2 else GALLERY
    figures = sorted(source.glob("*.png"))
    if not figures:
        sys.exit(f"{source}: no figures; run `make demo` (or alignsam-diag demo) first.")
    target_folder.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        target = target_folder / figure.name
        Image.open(figure).convert("RGB").quantize(256).save(target, optimize=True)
        size = target.stat().st_size
        print(f"{target} {size / 1000:.0f} KB" + ("  (over the limit)" if size > LIMIT else ""))


if __name__ == "__main__":
    main()
