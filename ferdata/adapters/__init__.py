"""One adapter per real dataset: each maps its native layout, labels, splits, subjects/videos,
landmarks, VA and crowd votes into manifest rows, and every row it cannot use into ``rejected``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ferdata.adapters import affectnet, affwild2, ckplus, fer2013, ferg, generic, jaffe, rafdb, sfew
from ferdata.adapters.base import Ingest
from ferdata.core.settings import Settings


@dataclass(frozen=True)
class Adapter:
    """How to ingest one dataset: the function, its options (the params section named after the dataset),
    what it expects to find and where the dataset is obtained."""

    ingest: Callable[..., tuple[Ingest, Path]]
    options: type[Settings]
    expected: str
    where: str


ADAPTERS: dict[str, Adapter] = {
    "rafdb": Adapter(
        rafdb.ingest, rafdb.Options, "basic/EmoLabel/list_patition_label.txt and basic/Image/aligned/", rafdb.WHERE
    ),
    "affectnet": Adapter(
        affectnet.ingest,
        affectnet.Options,
        "Manually_Annotated_file_lists/{training,validation}.csv and Manually_Annotated_Images/",
        affectnet.WHERE,
    ),
    "fer2013": Adapter(
        fer2013.ingest, fer2013.Fer2013Options, "fer2013.csv (emotion,pixels,Usage)", fer2013.WHERE_FER2013
    ),
    "ferplus": Adapter(
        fer2013.ingest,
        fer2013.FerplusOptions,
        "fer2013.csv + fer2013new.csv, or FER2013{Train,Valid,Test}/label.csv with the PNGs",
        fer2013.WHERE_FERPLUS,
    ),
    "ckplus": Adapter(
        ckplus.ingest,
        ckplus.Options,
        "cohn-kanade-images/ + Emotion/ (+ Landmarks/), or CK+48/<class>/*.png",
        ckplus.WHERE,
    ),
    "jaffe": Adapter(jaffe.ingest, jaffe.Options, "jaffedbase/*.tiff (+ the rating table in a .txt file)", jaffe.WHERE),
    "sfew": Adapter(sfew.ingest, sfew.Options, "Train/<Emotion>/*.png and Val/<Emotion>/*.png", sfew.WHERE),
    "affwild2": Adapter(
        affwild2.ingest, affwild2.Options, "cropped_aligned/<video>/ and EXPR_Classification_Challenge/", affwild2.WHERE
    ),
    "ferg": Adapter(ferg.ingest, ferg.Options, "<character>/<character>_<emotion>/*.png", ferg.WHERE),
    "folder": Adapter(
        generic.ingest_folder,
        generic.FolderOptions,
        "<root>/<split>/<class>/*.jpg or <root>/<class>/*.jpg",
        "any image folder of yours",
    ),
    "csv": Adapter(
        generic.ingest_csv, generic.CsvOptions, "a CSV with a path column and a label column", "any table of yours"
    ),
}

__all__ = ["ADAPTERS", "Adapter", "Ingest"]
