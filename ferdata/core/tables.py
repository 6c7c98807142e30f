"""Every table and file ferdata writes, in one registry: kind -> file name, folder, arrow schema, writer.

Stages name their inputs and outputs by kind (``TABLES["labels"]``), never by file name, so a file
is renamed in one place and the DVC stage check (tests/test_stages.py) reads the same names.

Distribution columns (``true_dist``, ``distribution``) and ``votes`` hold one value per class of the
table's class list, stored as JSON in the file metadata under ``ferdata.classes``. Label columns of the
internal tables hold canonical class ids (see :mod:`ferdata.core.classes`); the exported soft labels,
read by other projects, hold positions into their own ``classes`` instead (``distribution[label]`` is the
given label's probability) beside the class names.

Lists are plain ``list<float>``, ``bbox`` (4 values) and ``landmarks`` (10) included: a missing box is a
null list, and a fixed-size list column holding nulls is unreadable by pyarrow < 26 ("Expected all lists
to be of size=4"), so fixed-size lists are not used; the suites check the lengths instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = "3"  # 2: softlabels label/predicted are positions into the file's classes; 3: named *_index,
# with the image path, and method_uncertainty (null where the method learned none) in place of uncertainty

FOLDERS = ("data", "models", "reports", "repo")  # data/<ds>, models/<ds>, reports/<ds>, the repository root

_f32 = pa.float32()
_id = pa.field("sample_id", pa.string(), nullable=False)
_learned = pa.schema(
    [
        _id,
        pa.field("split", pa.string(), nullable=False),
        pa.field("distribution", pa.list_(_f32), nullable=False),
        pa.field("uncertainty", _f32, nullable=False),
    ]
)


@dataclass(frozen=True)
class Table:
    """One kind of file a stage writes: where it lives and, for parquet tables, its schema."""

    kind: str
    file: str  # path inside its folder
    writer: str  # the ferdata command that writes it (named in "not found" hints)
    folder: str = "data"  # one of FOLDERS
    schema: pa.Schema | None = None  # parquet tables; None for folders and other files
    optional: bool = False  # written only in some configurations (raw/ by synth alone)

    @property
    def is_folder(self) -> bool:
        return self.schema is None and "." not in self.file

    @property
    def hint(self) -> str:
        return f"run `ferdata {self.writer}` first"


def _tables(*tables: Table) -> dict[str, Table]:
    return {t.kind: t for t in tables}


TABLES: dict[str, Table] = _tables(
    Table(
        "manifest",
        "manifest.parquet",
        "download",
        schema=pa.schema(
            [
                _id,
                pa.field("dataset", pa.string(), nullable=False),
                pa.field("split", pa.string(), nullable=False),
                pa.field("path", pa.string(), nullable=False),
                pa.field("label", pa.int16()),
                pa.field("video_id", pa.string()),
                pa.field("subject_id", pa.string()),
                pa.field("frame", pa.int32()),
                pa.field("bbox", pa.list_(_f32)),
                pa.field("landmarks", pa.list_(_f32)),
                pa.field("valence", _f32),
                pa.field("arousal", _f32),
                pa.field("votes", pa.list_(pa.int32())),
                pa.field("true_dist", pa.list_(_f32)),
            ]
        ),
    ),
    Table(
        "rejected",
        "rejected.parquet",
        "download",
        schema=pa.schema(
            [
                _id,
                pa.field("path", pa.string()),
                pa.field("reason", pa.string(), nullable=False),
                pa.field("detail", pa.string()),
            ]
        ),
    ),
    Table("raw", "raw", "download", optional=True),  # synth's generated photos; real datasets stay where they are
    Table("extracted", "extracted", "download", optional=True),  # an archive's files, published with the manifest
    Table(
        "aligned",
        "aligned.parquet",
        "align",
        schema=pa.schema(
            [
                _id,
                pa.field("status", pa.string(), nullable=False),
                pa.field("detector", pa.string(), nullable=False),
                pa.field("score", _f32),
                pa.field("path", pa.string()),
                pa.field("reason", pa.string()),
                pa.field("flags", pa.string()),
            ]
        ),
    ),
    Table("aligned_faces", "aligned", "align"),
    Table(
        "shard_index",
        "shard_index.parquet",
        "shard",
        schema=pa.schema(
            [
                _id,
                pa.field("shard", pa.string(), nullable=False),
                pa.field("position", pa.int32(), nullable=False),
            ]
        ),
    ),
    Table("shards", "shards", "shard"),
    Table(
        "va",
        "va.parquet",
        "va",
        schema=pa.schema(
            [
                _id,
                pa.field("valence", _f32, nullable=False),
                pa.field("arousal", _f32, nullable=False),
                pa.field("source", pa.string(), nullable=False),
            ]
        ),
    ),
    Table(
        "knn",
        "knn.parquet",
        "va",
        schema=pa.schema(
            [
                _id,
                pa.field("neighbours", pa.list_(pa.string()), nullable=False),
                pa.field("distances", pa.list_(_f32), nullable=False),
            ]
        ),
    ),
    Table(
        "labels",
        "labels.parquet",
        "noise",
        schema=pa.schema(
            [
                _id,
                pa.field("split", pa.string(), nullable=False),
                pa.field("label", pa.int16(), nullable=False),
                pa.field("clean_label", pa.int16(), nullable=False),
                pa.field("flipped", pa.bool_(), nullable=False),
                pa.field("noise_mode", pa.string(), nullable=False),
                pa.field("noise_ratio", _f32, nullable=False),
                pa.field("noise_seed", pa.int64(), nullable=False),
            ]
        ),
    ),
    Table(
        "plan",
        "plan.parquet",
        "sample",
        schema=pa.schema(
            [
                pa.field("epoch", pa.int32(), nullable=False),
                pa.field("position", pa.int32(), nullable=False),
                _id,
            ]
        ),
    ),
    Table("prior", "prior.parquet", "prior", schema=_learned),
    Table(
        "regressed_va",
        "regressed_va.parquet",
        "regress",
        schema=pa.schema(
            [
                _id,
                pa.field("valence", _f32, nullable=False),
                pa.field("arousal", _f32, nullable=False),
            ]
        ),
    ),
    Table("model", "model.pt", "train", folder="models"),
    Table("learned", "learned.parquet", "train", folder="models", schema=_learned),
    Table("train_log", "train_log.json", "train", folder="models"),
    Table(
        "softlabels",
        "softlabels.parquet",
        "export",
        schema=pa.schema(
            [
                _id,
                pa.field("split", pa.string(), nullable=False),
                pa.field("image", pa.string(), nullable=False),  # relative to the dataset folder (or absolute)
                pa.field("label_index", pa.int16()),  # position in the file's classes (not a canonical id)
                pa.field("label_name", pa.string()),
                pa.field("distribution", pa.list_(_f32), nullable=False),
                pa.field("predicted_index", pa.int16(), nullable=False),  # position in the file's classes
                pa.field("predicted_name", pa.string(), nullable=False),
                pa.field("confidence", _f32, nullable=False),
                pa.field("method_uncertainty", _f32),  # the method's own, training faces; null elsewhere
                pa.field("suspected_noisy", pa.bool_(), nullable=False),
                pa.field("valence", _f32),
                pa.field("arousal", _f32),
                pa.field("method", pa.string(), nullable=False),
            ]
        ),
    ),
    Table("softlabels_card", "softlabels.card.md", "export"),  # the soft labels described, for readers without ferdata
    Table("metrics", "metrics.json", "report", folder="reports"),
    Table("predictions", "predictions.csv", "report", folder="reports"),  # DVC's confusion plot data
    Table("report_page", "index.html", "report", folder="reports"),
    Table("fig_curves", "training_curves.png", "report", folder="reports"),
    Table("fig_class_balance", "class_balance.png", "report", folder="reports"),
    Table("fig_confusion", "confusion.png", "report", folder="reports"),
    Table("fig_va", "va.png", "report", folder="reports"),
    Table("fig_uncertainty", "uncertainty.png", "report", folder="reports"),
    Table("fig_ambiguous", "ambiguous.png", "report", folder="reports"),
    Table("vega_template", "reports/vega.html", "vega-template", folder="repo"),
    # a noise sweep's summary (``ferdata sweep --out``)
    Table("sweep_table", "sweep.csv", "sweep", folder="reports"),
    Table("sweep_curve", "noise_recovery.png", "sweep", folder="reports"),
)

SCHEMAS: dict[str, pa.Schema] = {t.kind: t.schema for t in TABLES.values() if t.schema is not None}
