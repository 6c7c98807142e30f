"""Each adapter on a fixture that mimics its dataset's real layout, odd cases included."""

import csv
import hashlib
import tarfile

import cv2
import numpy as np
import pytest

from ferdata.adapters.base import path_id
from ferdata.core.classes import CANONICAL
from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table
from ferdata.download import download

C = CANONICAL.index


def img(path, size=(48, 48), colour=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(hashlib.sha256(str(path).encode()).hexdigest()[:8], 16))  # one image per path
    shape = (*size, 3) if colour else size
    cv2.imwrite(str(path), rng.integers(0, 255, shape, dtype=np.uint8))
    return path


def tables(out):
    manifest, meta = read_table(out / "manifest.parquet", "manifest")
    rejected, _ = read_table(out / "rejected.parquet", "rejected")
    return manifest.set_index("sample_id"), meta, rejected.set_index("sample_id")


def test_rafdb(tmp_path):
    root = tmp_path / "src" / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel/list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 4\ntest_0001.jpg 1\ntest_0002.jpg 9\ntrain_00003.jpg 7\n\n"
    )
    for stem in ("train_00001", "train_00002", "test_0001", "test_0002"):
        img(root / f"Image/aligned/{stem}_aligned.jpg", (100, 100), colour=True)
    (root / "Image/aligned/train_00002_aligned.jpg").write_bytes(b"")  # a broken file
    df = download("rafdb", tmp_path / "out", source=str(tmp_path / "src"))
    m, meta, rej = tables(tmp_path / "out")
    assert meta["classes"] == list(CANONICAL[:7]) and meta["root"].endswith("basic")
    assert m.loc["rafdb-train_00001", "label"] == C("sad") and m.loc["rafdb-test_0001", "label"] == C("surprise")
    assert m.loc["rafdb-test_0001", "split"] == "test" and m.loc["rafdb-train_00001", "split"] in ("train", "val")
    assert m.loc["rafdb-train_00001", "path"] == "Image/aligned/train_00001_aligned.jpg"
    assert rej.loc["rafdb-test_0002", "reason"] == "unknown_label"
    assert rej.loc["rafdb-train_00002", "reason"] == "unreadable"
    assert rej.loc["rafdb-train_00003", "reason"] == "missing_image"
    assert len(df) == 2


def test_rafdb_original_images_carry_manual_landmarks(tmp_path):
    root = tmp_path / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("train_00001.jpg 4\n")
    img(root / "Image/original/train_00001.jpg", (200, 160), colour=True)
    (root / "Annotation/manual").mkdir(parents=True)
    (root / "Annotation/manual/train_00001_manu_attri.txt").write_text(
        "60.1 80.2\n100.3 81.0\n80.0 100.5\n65.2 120.0\n98.7 121.3\n0\n1\n2\n"
    )
    download("rafdb", tmp_path / "out", source=str(root), dataset={"images": "original", "val_fraction": 0})
    m, _, _ = tables(tmp_path / "out")
    assert np.allclose(
        m.loc["rafdb-train_00001", "landmarks"], [60.1, 80.2, 100.3, 81.0, 80.0, 100.5, 65.2, 120.0, 98.7, 121.3]
    )


def ferplus_row(name, votes):
    return [name, "(0, 0, 48, 48)", *map(str, votes)]


def test_ferplus_folders(tmp_path):
    root = tmp_path / "ferplus"
    rows = {
        "FER2013Train": [
            ferplus_row("fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]),
            ferplus_row("fer0000009.png", [0, 0, 6, 0, 0, 0, 4, 0, 0, 0]),
            ferplus_row("fer0000010.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),
            ferplus_row("fer0000011.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),
            ferplus_row("fer0000012.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),
        ],
        "FER2013Valid": [ferplus_row("fer0028638.png", [0, 0, 0, 0, 0, 0, 0, 3, 7, 0])],
    }
    for folder, lines in rows.items():
        (root / folder).mkdir(parents=True)
        with open(root / folder / "label.csv", "w", newline="") as fh:
            csv.writer(fh).writerows(lines)
        for line in lines:
            img(root / folder / line[0])
    # a byte-identical duplicate face, as FER2013 has
    (root / "FER2013Train/fer0000012.png").write_bytes((root / "FER2013Train/fer0000000.png").read_bytes())
    download("ferplus", tmp_path / "out", source=str(tmp_path))
    m, meta, rej = tables(tmp_path / "out")
    assert meta["classes"] == list(CANONICAL)
    row = m.loc["ferplus-fer0000000"]
    assert row["label"] == C("neutral") and row["split"] == "train"
    # votes in canonical order: neutral happy sad surprise fear disgust anger contempt
    assert list(row["votes"]) == [4, 0, 1, 0, 0, 2, 3, 0]
    assert np.allclose(row["true_dist"], np.array([4, 0, 1, 0, 0, 2, 3, 0]) / 10)
    assert m.loc["ferplus-fer0000009", "label"] == C("surprise")
    assert rej.loc["ferplus-fer0000010", "reason"] == "not_a_face"
    assert rej.loc["ferplus-fer0000011", "reason"] == "tied_top_votes"
    assert rej.loc["ferplus-fer0028638", "reason"] == "unknown_majority"
    assert rej.loc["ferplus-fer0000012", "reason"] == "duplicate_image"


def test_ferplus_majority_mode(tmp_path):
    root = tmp_path / "FER2013Train"
    root.mkdir()
    with open(root / "label.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([ferplus_row("fer0000001.png", [4, 3, 3, 0, 0, 0, 0, 0, 0, 0])])
    img(root / "fer0000001.png")
    with pytest.raises(FerdataError, match="no usable samples.*no_majority"):
        download("ferplus", tmp_path / "out", source=str(tmp_path), dataset={"label_mode": "majority"})
    download("ferplus", tmp_path / "out", source=str(tmp_path))
    assert tables(tmp_path / "out")[0].loc["ferplus-fer0000001", "label"] == C("neutral")


def write_fer2013(root, rows):
    with open(root / "fer2013.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)


def pixels(value):
    return " ".join([str(value)] * 2304)


def test_fer2013_csv_decodes_pixels(tmp_path):
    write_fer2013(
        tmp_path,
        [
            [0, pixels(10), "Training"],
            [3, pixels(20), "PublicTest"],
            [6, pixels(30), "PrivateTest"],
            [2, "1 2 3", "Training"],
            [9, pixels(40), "Training"],
        ],
    )
    download("fer2013", tmp_path / "out", source=str(tmp_path / "fer2013.csv"))
    m, meta, rej = tables(tmp_path / "out")
    assert meta["classes"] == list(CANONICAL[:7]) and meta["root"] == "."
    assert list(m["split"]) == ["train", "val", "test"]
    assert list(m["label"]) == [C("anger"), C("happy"), C("neutral")]
    face = cv2.imread(str(tmp_path / "out" / m.loc["fer2013-00001", "path"]), cv2.IMREAD_UNCHANGED)
    assert face.shape == (48, 48) and (face == 20).all()
    assert rej.loc["fer2013-00003", "reason"] == "bad_pixels" and rej.loc["fer2013-00004", "reason"] == "unknown_label"


def test_ferplus_csv_joins_row_by_row(tmp_path):
    write_fer2013(tmp_path, [[0, pixels(10), "Training"], [3, pixels(20), "Training"], [6, pixels(30), "PublicTest"]])
    with open(tmp_path / "fer2013new.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "Usage",
                "Image name",
                "neutral",
                "happiness",
                "surprise",
                "sadness",
                "anger",
                "disgust",
                "fear",
                "contempt",
                "unknown",
                "NF",
            ]
        )
        w.writerow(["Training", "fer0000000.png", 0, 0, 0, 0, 9, 1, 0, 0, 0, 0])
        w.writerow(["Training", "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 10])  # removed by FER+
        w.writerow(["PublicTest", "fer0028638.png", 8, 2, 0, 0, 0, 0, 0, 0, 0, 0])
    download("ferplus", tmp_path / "out", source=str(tmp_path))
    m, _, rej = tables(tmp_path / "out")
    assert list(m.index) == ["ferplus-fer0000000", "ferplus-fer0028638"]
    assert m.loc["ferplus-fer0000000", "label"] == C("anger") and m.loc["ferplus-fer0028638", "split"] == "val"
    assert rej.loc["fer2013-00001", "reason"] == "removed_by_ferplus"


def test_affectnet(tmp_path):
    root = tmp_path / "AffectNet"
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    lmk = ";".join(f"{10 + i % 17}.0;{20 + i // 17}.0" for i in range(68))
    header = [
        "subDirectory_filePath",
        "face_x",
        "face_y",
        "face_width",
        "face_height",
        "facial_landmarks",
        "expression",
        "valence",
        "arousal",
    ]
    rows = [
        ["689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg", 134, 134, 899, 899, lmk, 1, 0.78, 0.11],
        ["392/c4db2f9b7e4b422d14b6e038f0cdc3ecee239b55326e9181ee4520f9.jpg", 20, 20, 200, 200, lmk, 8, -2, -2],
        ["392/aaaa.jpg", 20, 20, 200, 200, lmk, 10, -2, -2],
        ["100/bbbb.png", 20, 20, 200, 200, lmk, 6, -2, -2],
    ]
    with open(lists / "training.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    with open(lists / "validation.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, ["5/cccc.jpg", 0, 0, 100, 100, lmk, 7, -0.5, 0.6]])
    for rel in ("689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg", "100/bbbb.png", "5/cccc.jpg"):
        img(root / "Manually_Annotated_Images" / rel, (120, 120), colour=True)
    download("affectnet", tmp_path / "out", source=str(tmp_path), dataset={"val_fraction": 0})
    m, meta, rej = tables(tmp_path / "out")
    assert meta["classes"] == list(CANONICAL)
    happy = m.loc["affectnet-689_737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca"]
    assert happy["label"] == C("happy") and np.isclose(happy["valence"], 0.78) and len(happy["landmarks"]) == 10
    assert list(happy["bbox"]) == [134, 134, 899, 899]
    assert np.isnan(m.loc["affectnet-100_bbbb", "valence"])  # -2 = not annotated
    assert m.loc["affectnet-5_cccc", "label"] == C("contempt") and m.loc["affectnet-5_cccc", "split"] == "test"
    assert set(rej["reason"]) == {"none", "no_face"}


def test_landmarks68_to5():
    from ferdata.adapters.base import landmarks68_to5

    p = np.zeros((68, 2))
    p[36:42] = [10, 20]
    p[42:48] = [30, 20]
    p[30], p[48], p[54] = [20, 30], [12, 40], [28, 40]
    assert landmarks68_to5(p).tolist() == [10, 20, 30, 20, 20, 30, 12, 40, 28, 40]


def test_ckplus_sequences(tmp_path):
    root = tmp_path / "CK+"
    for seq, n, label in (("S005/001", 5, 3.0), ("S010/002", 4, 5.0), ("S011/001", 3, None)):
        subject, number = seq.split("/")
        for f in range(1, n + 1):
            img(root / "cohn-kanade-images" / seq / f"{subject}_{number}_{f:08d}.png", (64, 64))
            (root / "Landmarks" / seq).mkdir(parents=True, exist_ok=True)
            (root / "Landmarks" / seq / f"{subject}_{number}_{f:08d}_landmarks.txt").write_text(
                "\n".join(f"   {100 + i}.0   {50 + i}.0" for i in range(68))
            )
        if label is not None:
            (root / "Emotion" / seq).mkdir(parents=True)
            (root / "Emotion" / seq / f"{subject}_{number}_{n:08d}_emotion.txt").write_text(f"   {label:.7e}\n")
    download("ckplus", tmp_path / "out", source=str(root), dataset={"val_fraction": 0, "test_fraction": 0})
    m, _meta, rej = tables(tmp_path / "out")
    assert len(m) == 8  # 3 peak frames + the first (neutral) frame per labelled sequence
    assert m.loc["ckplus-S005_001_00000005", "label"] == C("disgust")
    assert m.loc["ckplus-S005_001_00000001", "label"] == C("neutral")
    assert m.loc["ckplus-S010_002_00000004", "label"] == C("happy")
    assert (
        m.loc["ckplus-S005_001_00000003", "video_id"] == "S005_001" and m.loc["ckplus-S005_001_00000003", "frame"] == 3
    )
    assert len(m.loc["ckplus-S005_001_00000003", "landmarks"]) == 10
    assert rej.loc["ckplus-S011_001", "reason"] == "unlabelled_sequence"


def test_ckplus48_keeps_subjects_within_one_split(tmp_path):
    for cls, subject in (
        ("anger", "S010"),
        ("happy", "S011"),
        ("surprise", "S010"),
        ("contempt", "S012"),
        ("fear", "S013"),
    ):
        for f in (11, 12, 13):
            img(tmp_path / "CK+48" / cls / f"{subject}_00{len(cls)}_{f:08d}.png")
    download("ckplus", tmp_path / "out", source=str(tmp_path))
    m, meta, _ = tables(tmp_path / "out")
    assert meta["classes"] == ["happy", "surprise", "fear", "anger", "contempt"]
    assert m.groupby("subject_id")["split"].nunique().max() == 1 and (m["split"] == "train").any()


def test_jaffe_ratings_become_distributions(tmp_path):
    root = tmp_path / "jaffe"
    for name in ("KA.AN1.39.tiff", "KA.NE1.26.tiff", "YM.HA2.53.tiff", "KM.SU1.14.tiff"):
        img(root / "jaffedbase" / name, (256, 256))
    (root / "DATASET_README.txt").write_text(
        "Mean semantic ratings by 60 Japanese female students.\n\n# HAP SAD SUR ANG DIS FEA PIC\n-----\n"
        "1 1.10 1.60 1.30 4.70 3.00 1.40 KA-AN1\n2 2.87 2.52 2.10 1.97 1.97 2.06 KA-NE1\n"
        "3 4.90 1.13 1.26 1.10 1.03 1.10 YN-HA2\n4 1.20 1.10 4.90 1.10 1.10 2.90 KM-SU1\n"
        "----- Semantic Ratings Data (Fear Excluded) -----\n1 5.00 1.00 1.00 1.00 1.00 KA-AN1\n"
    )
    download("jaffe", tmp_path / "out", source=str(tmp_path))
    m, meta, _ = tables(tmp_path / "out")
    assert meta["classes"] == list(CANONICAL[:7])
    anger = m.loc["jaffe-KA_AN1_39"]
    assert anger["label"] == C("anger") and anger["subject_id"] == "KA"
    assert np.argmax(anger["true_dist"]) == C("anger") and np.isclose(anger["true_dist"].sum(), 1)
    assert np.argmax(m.loc["jaffe-YM_HA2_53", "true_dist"]) == C("happy")  # the misspelt YN key
    assert np.argmax(m.loc["jaffe-KA_NE1_26", "true_dist"]) == C("neutral")


def test_sfew(tmp_path):
    for split in ("Train", "Val"):
        for cls in ("Angry", "Happy", "Sad"):
            img(tmp_path / "SFEW_2" / split / cls / f"Movie_{cls}_001_{split}.png", (143, 181), colour=True)
    img(tmp_path / "SFEW_2" / "Test" / "Movie_x_001.png", colour=True)
    img(tmp_path / "SFEW_2" / "Train" / "Bored" / "Movie_b_001.png", colour=True)
    download("sfew", tmp_path / "out", source=str(tmp_path), dataset={"val_fraction": 0})
    m, meta, rej = tables(tmp_path / "out")
    assert meta["classes"] == ["happy", "sad", "anger"]
    assert (m["split"] == "test").sum() == 3 and (m["split"] == "train").sum() == 3
    assert set(rej["reason"]) == {"unknown_label"}  # Bored; Test has no class folders at all


def test_affwild2(tmp_path):
    root = tmp_path / "affwild2"
    (root / "EXPR_Classification_Challenge/Train_Set").mkdir(parents=True)
    (root / "EXPR_Classification_Challenge/Train_Set/1-30-1280x720.txt").write_text(
        "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n0\n4\n-1\n7\n5\n"
    )
    (root / "VA_Estimation_Challenge/Train_Set").mkdir(parents=True)
    (root / "VA_Estimation_Challenge/Train_Set/1-30-1280x720.txt").write_text(
        "valence,arousal\n0.1,0.2\n0.5,0.4\n-5,-5\n0.0,0.0\n-5,-5\n"
    )
    for f in (1, 2, 3, 4):  # frame 5 was never detected: no image
        img(root / "cropped_aligned/1-30-1280x720" / f"{f:05d}.jpg", (112, 112), colour=True)
    download("affwild2", tmp_path / "out", source=str(tmp_path), dataset={"val_fraction": 0})
    m, _, rej = tables(tmp_path / "out")
    assert list(m.index) == ["affwild2-1-30-1280x720-00001", "affwild2-1-30-1280x720-00002"]
    assert m.iloc[1]["label"] == C("happy") and np.isclose(m.iloc[1]["valence"], 0.5) and m.iloc[1]["frame"] == 2
    assert rej["reason"].to_dict() == {
        "affwild2-1-30-1280x720-00003": "unlabelled_frame",
        "affwild2-1-30-1280x720-00004": "other",
        "affwild2-1-30-1280x720-00005": "missing_image",
    }


def test_ferg(tmp_path):
    for character in ("aia", "ray"):
        for emotion in ("joy", "anger", "neutral"):
            for n in (1, 2):
                img(tmp_path / "FERG_DB_256" / character / f"{character}_{emotion}" / f"{character}_{emotion}_{n}.png")
    download("ferg", tmp_path / "out", source=str(tmp_path))
    m, meta, _ = tables(tmp_path / "out")
    assert len(m) == 12 and meta["classes"] == ["neutral", "happy", "anger"]
    assert m.loc["ferg-aia_joy_1", "label"] == C("happy") and m.loc["ferg-aia_joy_1", "subject_id"] == "aia"


def test_folder_with_and_without_splits(tmp_path):
    for split in ("train", "test"):
        for cls in ("happy", "SAD"):
            img(tmp_path / "a" / split / cls / f"{split}{cls}.jpg", colour=True)
    (tmp_path / "a/train/happy/notes.txt").write_text("not an image")
    download("folder", tmp_path / "outa", source=str(tmp_path / "a"), dataset={"val_fraction": 0})
    m, meta, _ = tables(tmp_path / "outa")
    assert sorted(m["split"]) == ["test", "test", "train", "train"] and meta["classes"] == ["happy", "sad"]
    for cls in ("neutral", "angry", "bored"):
        img(tmp_path / "b" / cls / "x.png")
    download("folder", tmp_path / "outb", source=str(tmp_path / "b"))
    m, _, rej = tables(tmp_path / "outb")
    assert sorted(m["label"]) == [C("neutral"), C("anger")] and rej["reason"].tolist() == ["unknown_label"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerdataError, match="no images under"):
        download("folder", tmp_path / "outc", source=str(tmp_path / "empty"))


def test_csv_with_images_elsewhere(tmp_path):
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data/legend.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(
            [
                ["user.id", "image", "emotion"],
                ["302", "a_0001.jpg", "HAPPINESS"],
                ["dwdii", "b_0001.jpg", "happiness"],
                ["x", "c_0001.jpg", "neutral"],
                ["x", "a_0001.jpg", "neutral"],
                ["x", "d_0001.jpg", "bored"],
            ]
        )
    for name in ("a_0001.jpg", "b_0001.jpg", "d_0001.jpg"):
        img(tmp_path / "images" / name, colour=True)
    download("csv", tmp_path / "out", source=str(tmp_path / "data/legend.csv"))
    m, meta, rej = tables(tmp_path / "out")
    assert meta["root"] == str((tmp_path / "images").resolve())
    assert sorted(m["label"]) == [C("happy"), C("happy")]
    assert rej["reason"].to_dict() == {
        path_id("csv", "a_0001.jpg"): "duplicate_path",
        path_id("csv", "c_0001.jpg"): "missing_image",
        path_id("csv", "d_0001.jpg"): "unknown_label",
    }


def test_archive_source_and_missing_source(tmp_path):
    src = tmp_path / "src"
    for cls in ("happy", "sad"):
        img(src / "faces" / cls / "x.png")
    with tarfile.open(tmp_path / "faces.tar.gz", "w:gz") as tar:
        tar.add(src / "faces", arcname="faces")
    download("folder", tmp_path / "out", source=str(tmp_path / "faces.tar.gz"))
    m, meta, _ = tables(tmp_path / "out")
    assert meta["root"] == "extracted/faces" and (tmp_path / "out" / meta["root"] / m["path"].iloc[0]).is_file()
    with pytest.raises(
        FerdataError, match=r"rafdb needs a source: set download.source .* --from .*list_patition_label.txt.*whdeng"
    ):
        download("rafdb", tmp_path / "out2")
    with pytest.raises(FerdataError, match=r"rafdb not found under .*expected EmoLabel/list_patition_label.txt"):
        download("rafdb", tmp_path / "out2", source=str(src))


def _ck_folder(root, subjects=12, sequences=2, frames=3):
    """A CK+48-like folder: <class>/S<subject>_<sequence>_<frame>.png, one class per sequence."""
    classes = ["happy", "sadness", "surprise", "anger"]
    for s in range(subjects):
        for q in range(sequences):
            for f in range(frames):
                img(root / classes[(s + q) % 4] / f"S{s + 10:03d}_{q + 1:03d}_{f + 1:08d}.png")
    return root


def test_a_plain_folder_of_ck_faces_gets_subject_disjoint_splits(tmp_path, capsys):
    from ferdata.download import summarize

    source = _ck_folder(tmp_path / "CK+48")
    df = download("ck", tmp_path / "out", source=str(source), adapter="folder")
    m, meta, _ = tables(tmp_path / "out")
    assert m["subject_id"].nunique() == 12 and m["video_id"].nunique() == 24
    assert m.groupby("subject_id")["split"].nunique().max() == 1  # per image, most subjects crossed splits
    assert set(m["split"]) == {"train", "val", "test"}
    assert meta["splits_by"] == {"by": "subject", "groups": 12, "shared_groups": 0, "ungrouped": 0, "pattern": "ckplus"}
    assert "splits by subject: 12 subjects read with the ckplus pattern" in summarize(df)


def test_a_folder_without_subjects_warns_that_its_splits_are_per_image(tmp_path):
    from ferdata.download import summarize

    for i in range(12):
        img(tmp_path / "faces" / ("happy" if i % 2 else "sad") / f"photo{i}.jpg")
    df = download("mine", tmp_path / "out", source=str(tmp_path / "faces"), adapter="folder")
    _, meta, _ = tables(tmp_path / "out")
    assert meta["splits_by"]["by"] == "image" and meta["splits_by"]["groups"] == 12
    line = summarize(df)
    assert "WARNING no subject information: splits are per image (12 images)" in line
    assert "mine.subject_pattern" in line


def test_subject_patterns_by_preset_regex_or_none(tmp_path):
    from ferdata.core.errors import UsageError

    for i in range(8):
        img(tmp_path / "f" / "happy" / f"p{i % 4}-shot{i}.jpg")
    source = str(tmp_path / "f")
    download(
        "own", tmp_path / "o1", source=source, adapter="folder", dataset={"subject_pattern": r"^p(?P<subject>\d)-"}
    )
    m, meta, _ = tables(tmp_path / "o1")
    assert sorted(m["subject_id"].unique()) == ["0", "1", "2", "3"] and meta["splits_by"]["pattern"] == "custom"
    assert m.groupby("subject_id")["split"].nunique().max() == 1
    _ck_folder(tmp_path / "ck", subjects=4)
    download("own", tmp_path / "o2", source=str(tmp_path / "ck"), adapter="folder", dataset={"subject_pattern": "none"})
    assert tables(tmp_path / "o2")[1]["splits_by"]["by"] == "image"
    for bad, words in (("(", "is not a regular expression"), (r"p(\d)", "has no (?P<subject>...) group")):
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            download("own", tmp_path / "o3", source=source, adapter="folder", dataset={"subject_pattern": bad})


def test_a_csv_reads_subjects_from_its_paths_when_it_has_no_subject_column(tmp_path):
    rows = [["path", "label"]]
    for s in range(6):
        for f in range(3):
            name = f"S{s:03d}_001_{f:08d}.png"
            img(tmp_path / "imgs" / name)
            rows.append([name, "happy" if s % 2 else "sad"])
    with open(tmp_path / "imgs/faces.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    download("csv", tmp_path / "out", source=str(tmp_path / "imgs/faces.csv"))
    m, meta, _ = tables(tmp_path / "out")
    assert m["subject_id"].nunique() == 6 and meta["splits_by"]["pattern"] == "ckplus"
    assert m.groupby("subject_id")["split"].nunique().max() == 1


def test_jaffe_and_kdef_names_are_recognised():
    from ferdata.adapters.subjects import choose

    jaffe = choose("auto", ["KA.AN1.39.tiff", "KL.HA2.30.tiff", "UY.FE2.153.tiff"], option="x")
    assert jaffe.name == "jaffe" and jaffe.read("KA.AN1.39.tiff") == ("KA", None)
    kdef = choose("auto", ["AF01ANS.JPG", "BM12HAS.JPG", "AF02SUHL.JPG"], option="x")
    assert kdef.name == "kdef" and kdef.read("BM12HAS.JPG") == ("M12", None)
    nested = choose("subfolder", ["alice/1.jpg", "bob/2.jpg"], option="x")
    assert nested.read("alice/1.jpg") == ("alice", None)
    assert choose("auto", ["a.jpg", "b.jpg"], option="x").name is None


def test_a_csv_says_what_it_guessed_and_where_it_looked(tmp_path):
    from ferdata.download import summarize

    (tmp_path / "t").mkdir()
    rows = [["file", "emotion"]] + [[f"f{i}.png", "happy" if i % 2 else "sad"] for i in range(24)]
    with open(tmp_path / "t/list.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(FerdataError, match=r"24 of 24 images listed in .*list.csv are not under .*searched .*images"):
        download("csv", tmp_path / "o1", source=str(tmp_path / "t/list.csv"))
    for i in range(24):
        img(tmp_path / "t/images" / f"f{i}.png")
    line = summarize(download("csv", tmp_path / "o2", source=str(tmp_path / "t/list.csv")))
    assert "read list.csv: paths from column 'file', labels from 'emotion', images under" in line
    assert "(guessed)" in line and "WARNING classes with fewer than 10 training faces" in line
