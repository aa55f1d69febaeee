"""Regenerate the compressed UCI mfeat copy shipped in supernet/data/mfeat/mfeat.npz.

Usage: python benchmarks/make_mfeat_copy.py [CSV_FOLDER] [OUT]
(defaults: /work/shared/data/uci-mfeat and the shipped path). The CSV folder holds the six
mfeat-{fou,fac,kar,pix,zer,mor}.csv views; the copy keeps float32 features per view and int64 labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supernet.data.mfeat import SHIPPED, read_csv_views, read_npz_copy, write_npz_copy  # noqa: E402

DEFAULT_CSV = Path("/work/shared/data/uci-mfeat")


def main(argv: list[str]) -> int:
    csv_folder = Path(argv[0]) if argv else DEFAULT_CSV
    out = Path(argv[1]) if len(argv) > 1 else SHIPPED
    write_npz_copy(csv_folder, out)
    views, labels = read_csv_views(csv_folder)
    copy_views, copy_labels = read_npz_copy(out)
    assert (copy_labels == labels).all()
    assert all((copy_views[v] == views[v]).all() for v in views)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(labels)} samples, views {', '.join(views)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
