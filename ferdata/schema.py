"""Arrow schemas of every ferdata table: the one place that declares them.

Distribution columns (``true_dist``, ``distribution``) and ``votes`` hold one value per class of the
table's class list, stored as JSON in the file metadata under ``ferdata.classes``. Label columns hold
canonical class ids (see :mod:`ferdata.classes`).
"""

import pyarrow as pa

SCHEMA_VERSION = "1"

_f32 = pa.float32()
_id = pa.field("sample_id", pa.string(), nullable=False)

SCHEMAS: dict[str, pa.Schema] = {
    "manifest": pa.schema([
        _id,
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.int16()),
        pa.field("video_id", pa.string()),
        pa.field("subject_id", pa.string()),
        pa.field("frame", pa.int32()),
        pa.field("bbox", pa.list_(_f32, 4)),
        pa.field("landmarks", pa.list_(_f32, 10)),
        pa.field("valence", _f32),
        pa.field("arousal", _f32),
        pa.field("votes", pa.list_(pa.int32())),
        pa.field("true_dist", pa.list_(_f32)),
    ]),
    "quarantine": pa.schema([
        _id,
        pa.field("stage", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]),
    "rejected": pa.schema([
        _id,
        pa.field("path", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]),
    "aligned": pa.schema([
        _id,
        pa.field("status", pa.string(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("score", _f32),
        pa.field("path", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("flags", pa.string()),
    ]),
    "shard_index": pa.schema([
        _id,
        pa.field("shard", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
    ]),
    "va": pa.schema([
        _id,
        pa.field("valence", _f32, nullable=False),
        pa.field("arousal", _f32, nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]),
    "knn": pa.schema([
        _id,
        pa.field("neighbours", pa.list_(pa.string()), nullable=False),
        pa.field("distances", pa.list_(_f32), nullable=False),
    ]),
    "labels": pa.schema([
        _id,
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int16(), nullable=False),
        pa.field("clean_label", pa.int16(), nullable=False),
        pa.field("flipped", pa.bool_(), nullable=False),
        pa.field("noise_mode", pa.string(), nullable=False),
        pa.field("noise_ratio", _f32, nullable=False),
        pa.field("noise_seed", pa.int64(), nullable=False),
    ]),
    "plan": pa.schema([
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        _id,
    ]),
    "learned": pa.schema([
        _id,
        pa.field("split", pa.string(), nullable=False),
        pa.field("distribution", pa.list_(_f32), nullable=False),
        pa.field("uncertainty", _f32, nullable=False),
    ]),
    "softlabels": pa.schema([
        _id,
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int16()),
        pa.field("distribution", pa.list_(_f32), nullable=False),
        pa.field("predicted", pa.int16(), nullable=False),
        pa.field("confidence", _f32, nullable=False),
        pa.field("uncertainty", _f32, nullable=False),
        pa.field("suspected_noisy", pa.bool_(), nullable=False),
        pa.field("valence", _f32),
        pa.field("arousal", _f32),
        pa.field("method", pa.string(), nullable=False),
    ]),
}
