"""Alignment throughput per backend on real photos, and MTCNN's landmark error on synth.

Images per second per core (one process, one torch thread) for each align backend, beside a plain
PIL open+resize loop in the same process as the floor any backend pays; then the whole `align()`
stage with 2 worker processes. Landmark error: MTCNN's 5 points on the synth photos against the
synth manifest's true landmarks (the `landmarks` backend's input), as mean error over the inter-ocular
distance (NME), with the detection rate.

Usage (after `dvc repro` has built data/synth):
    python bench/align_throughput.py --photos ../shared/realdata/muxspace-sample.tar.gz --limit 300
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import save_and_print

from ferdata.align import AlignSettings, _align_one, align, read_image
from ferdata.core.io import image_root, read_table


def photos_from(source: Path, work: Path, limit: int) -> list[Path]:
    """Up to ``limit`` photos from a folder or an archive (extracted under ``work``)."""
    from ferdata.fetch import extract

    if source.is_file():
        extract(source, work / "photos")
        source = work / "photos"
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]


def rate(fn, items: list) -> tuple[float, list]:
    """Items per second of ``fn`` over ``items`` (after one warm-up call) and its results."""
    fn(items[0])
    start = time.perf_counter()
    out = [fn(x) for x in items]
    return len(items) / (time.perf_counter() - start), out


def pil_floor(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as img:
        img.convert("RGB").resize((112, 112))


def backend_rate(detector: str, jobs: list[tuple], out: Path, **kw) -> tuple[float, list[dict]]:
    settings = AlignSettings(detector=detector, size=112, **kw)
    return rate(lambda job: _align_one((*job[:4], str(out / f"{job[0]}.jpg")), settings), jobs)


def landmark_error(data: Path, limit: int) -> dict[str, float]:
    """MTCNN's landmarks on synth photos vs the true ones: NME over inter-ocular distance."""
    from ferdata.detect import MTCNN

    manifest, meta = read_table(data / "manifest.parquet", "manifest")
    root = image_root(data, meta)
    det = MTCNN(device="cpu")
    errors, found = [], 0
    rows = manifest.iloc[:: max(1, len(manifest) // limit)].head(limit)
    for r in rows.itertuples(index=False):
        faces = det.detect(read_image(root / r.path))
        if not faces:
            continue
        found += 1
        truth = np.asarray(r.landmarks, np.float64).reshape(5, 2)
        best = min(faces, key=lambda f: np.abs(f.landmarks - truth).mean())
        errors.append(np.linalg.norm(best.landmarks - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[1]))
    return {
        "synth_faces": len(rows),
        "mtcnn_detected": found / len(rows),
        "mtcnn_nme_mean": float(np.mean(errors)) if errors else float("nan"),
        "mtcnn_nme_median": float(np.median(errors)) if errors else float("nan"),
    }


def sample_images() -> dict[str, int]:
    """Faces MTCNN finds in the real photos that ship with scikit-image and insightface."""
    import insightface
    from skimage import data

    from ferdata.detect import MTCNN

    det = MTCNN(device="cpu")
    found = {"skimage_astronaut": len(det.detect(data.astronaut()))}
    for path in sorted((Path(insightface.__file__).parent / "data" / "images").glob("*.*")):
        found[f"insightface_{path.stem}"] = len(det.detect(read_image(path)))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=Path("../shared/realdata/muxspace-sample.tar.gz"))
    ap.add_argument("--synth", type=Path, default=Path("data/synth"))
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/align_throughput.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, object] = {"torch_threads": 1}
    with tempfile.TemporaryDirectory(prefix="ferdata-align-bench-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        photos = photos_from(args.photos, work, args.limit)
        jobs = [(p.stem.replace(".", "_"), str(p), None, None) for p in photos]
        results["photos"] = len(photos)
        results["pil_open_resize_per_s"], _ = rate(pil_floor, photos)
        results["none_per_s"], _ = backend_rate("none", jobs, out)
        results["mtcnn_per_s"], rows = backend_rate("mtcnn", jobs, out)
        status = [r["status"] for r in rows]
        results["mtcnn_ok"] = status.count("ok") / len(rows)
        results["mtcnn_multi_face"] = sum(r.get("flags") == "multi_face" for r in rows) / len(rows)
        try:
            results["insightface_per_s"], _ = backend_rate("insightface", jobs, out)
        except Exception as exc:
            results["insightface_per_s"] = f"skipped: {str(exc).splitlines()[0][:80]}"
        if (args.synth / "manifest.parquet").is_file():
            manifest, meta = read_table(args.synth / "manifest.parquet", "manifest")
            root = image_root(args.synth, meta)
            synth_jobs = [
                (r.sample_id, str(root / r.path), r.landmarks, r.bbox)
                for r in manifest.head(args.limit).itertuples(index=False)
            ]
            results["landmarks_synth_per_s"], _ = backend_rate("landmarks", synth_jobs, out)
            results.update(landmark_error(args.synth, min(args.limit, 200)))
        results.update({f"faces_in_{k}": v for k, v in sample_images().items()})
        # the whole stage, 2 worker processes, on the photos as a csv dataset
        data = work / "data"
        from ferdata.download import download

        with open(work / "photos.csv", "w") as fh:
            fh.write("path,label\n" + "".join(f"{p},neutral\n" for p in photos))
        download("csv", data, source=str(work / "photos.csv"), dataset={"images": "/"})
        start = time.perf_counter()
        table = align(data, detector="mtcnn", workers=2)
        results["align_stage_mtcnn_2_workers_per_s"] = len(table) / (time.perf_counter() - start)
        shutil.rmtree(data)
    save_and_print(results, args.out, width=36, digits=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
