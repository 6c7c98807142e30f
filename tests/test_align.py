import cv2
import numpy as np
import pandas as pd
import pytest

from ferdata.align import align, read_image, warp_to_template
from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table, write_table
from ferdata.detect import find_weights
from ferdata.synth import TEMPLATE, SynthSettings, generate


def test_read_image_converts_every_kind(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), rgb[..., 0])
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([rgb, np.full((20, 30), 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "plain.jpg"), rgb)
    for name in ("grey.png", "alpha.png", "deep.png", "plain.jpg"):
        img = read_image(tmp_path / name)
        assert img.shape == (20, 30, 3) and img.dtype == np.uint8, name
    assert np.array_equal(read_image(tmp_path / "deep.png"), read_image(tmp_path / "alpha.png"))


def test_read_image_rejects_broken_files(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    for path in (tmp_path / "broken.jpg", tmp_path / "missing.png"):
        try:
            read_image(path)
        except ValueError as exc:
            assert "unreadable" in str(exc)
        else:
            raise AssertionError(f"{path} should not read")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_turns_a_phone_photo_upright(tmp_path, orientation):
    """Every EXIF orientation gives the picture a viewer shows (PIL's exif_transpose), JPEG and PNG."""
    from PIL import Image, ImageOps

    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[:6, :10] = (255, 0, 0)  # a red block top left: any turn or mirror moves it
    rgb[18:, 30:] = (0, 0, 255)
    for suffix in ("png", "jpg"):
        img = Image.fromarray(rgb)
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(tmp_path / f"photo.{suffix}", exif=exif.tobytes(), quality=100)
        with Image.open(tmp_path / f"photo.{suffix}") as shown:
            expected = np.asarray(ImageOps.exif_transpose(shown).convert("RGB"), np.int16)
        got = read_image(tmp_path / f"photo.{suffix}")
        assert got.shape == expected.shape and np.abs(got.astype(np.int16) - expected).max() <= 8, suffix


def test_pil_s_own_pixel_limit_does_not_hide_a_huge_image(tmp_path, monkeypatch):
    """PIL refuses to open images far above its MAX_IMAGE_PIXELS; the size check must still see them."""
    from PIL import Image

    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((40, 60, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 2,400 pixels: a DecompressionBombError for PIL
    with pytest.raises(ValueError, match="too large: 60x40 pixels"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    assert read_image(tmp_path / "big.png", max_pixels=10_000).shape == (40, 60, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # PIL's limit is left as it was


def test_read_image_never_opens_a_named_pipe(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")  # reading it would wait for a writer for ever
    with pytest.raises(ValueError, match="named pipe"):
        read_image(tmp_path / "pipe.png")


def test_warp_puts_landmarks_on_template():
    """Warp a synth photo and check the warped landmarks land near the template (in 112 pixels)."""
    from insightface.utils import face_align

    face = next(iter(generate(SynthSettings(n_subjects=1, videos_per_subject=1, frames_per_video=1), 5)))
    out = warp_to_template(face.image, face.landmarks, 112)
    assert out.shape == (112, 112, 3)
    m = face_align.estimate_norm(face.landmarks, 112)
    moved = face.landmarks @ m[:, :2].T + m[:, 2]
    assert np.abs(moved - TEMPLATE).max() < 8  # similarity fit; identity and yaw leave a few pixels
    # the face is now centred: the region around the template's nose is skin, not background
    assert out[60:80, 50:62].std() < out.std()


def test_bad_images_are_flagged_not_dropped(data_dir):
    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest")
    (data_dir / manifest["path"].iloc[0]).write_bytes(b"truncated")
    manifest.loc[1, "landmarks"] = None
    write_table(manifest, data_dir / "manifest.parquet", "manifest", {"classes": meta["classes"]})
    table = align(data_dir, size=112, workers=2, detector="landmarks")
    assert len(table) == len(manifest)
    status = table.set_index("sample_id")["status"]
    assert status[manifest["sample_id"].iloc[0]] == "unreadable"
    assert status[manifest["sample_id"].iloc[1]] == "no_landmarks"
    assert (status == "ok").sum() == len(manifest) - 2
    reasons = table.set_index("sample_id")["reason"]
    assert manifest["path"].iloc[0] in reasons[manifest["sample_id"].iloc[0]]
    ok = table[table["status"] == "ok"]
    assert all(cv2.imread(str(data_dir / p)).shape == (112, 112, 3) for p in ok["path"])


def test_auto_takes_the_landmarks_when_every_face_has_them_else_mtcnn(data_dir, capsys):
    table = align(data_dir, workers=1)
    assert set(table["detector"]) == {"landmarks"} and "detector auto -> landmarks (48/48" in capsys.readouterr().out
    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest")
    manifest["landmarks"] = None
    write_table(manifest, data_dir / "manifest.parquet", "manifest", meta)
    try:
        find_weights()
    except FerdataError:
        pytest.skip("pip install --no-deps facenet-pytorch==2.6.0")
    table = align(data_dir, workers=1, part=(1, 2))
    assert "detector auto -> mtcnn (0/48" in capsys.readouterr().out


def test_no_face_aligned_is_an_error_after_the_table_is_published(data_dir):
    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest")
    manifest["landmarks"] = None
    write_table(manifest, data_dir / "manifest.parquet", "manifest", meta)
    with pytest.raises(
        FerdataError, match=r"no face of .* could be aligned \(aligned 0/48 faces \(no_landmarks 48\)\)"
    ):
        align(data_dir, workers=1, detector="landmarks")
    table, _ = read_table(data_dir / "aligned.parquet", "aligned")
    assert set(table["status"]) == {"no_landmarks"}  # published: its reasons can be read


def test_unknown_detector(data_dir):
    import pytest

    from ferdata.core.errors import FerdataError

    with pytest.raises(
        FerdataError, match="align.detector 'dlib': use one of auto, landmarks, mtcnn, insightface, none"
    ):
        align(data_dir, detector="dlib")
    with pytest.raises(FerdataError, match="multiple of 112 or 128"):
        align(data_dir, size=100)
    assert pd.read_parquet(data_dir / "aligned.parquet")["status"].eq("ok").all()


def test_detector_none_resizes_already_aligned_faces(data_dir):
    import cv2

    table = align(data_dir, detector="none", size=64)
    assert (table["status"] == "ok").all() and (table["detector"] == "none").all()
    assert cv2.imread(str(data_dir / table["path"].iloc[0])).shape == (64, 64, 3)


def test_resize_face_crops_the_centre_square():
    import numpy as np

    from ferdata.align import resize_face

    img = np.zeros((100, 60, 3), np.uint8)
    img[20:80] = 255  # the centre 60x60 square is white
    out = resize_face(img, 30)
    assert out.shape == (30, 30, 3) and out.min() == 255


def test_read_image_handles_cmyk_and_rejects_truncated_jpeg(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "cmyk.jpg").shape == (40, 50, 3)
    cv2.imwrite(str(tmp_path / "whole.jpg"), rgb)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(tmp_path / "whole.png"), rgb)
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    for name in ("cut.jpg", "cut.png"):
        try:
            read_image(tmp_path / name)
        except ValueError as exc:
            assert "unreadable" in str(exc)
        else:
            raise AssertionError(f"{name} should not read")


def test_mtcnn_align_flags_faces_it_cannot_find(data_dir, tmp_path):
    import importlib.util

    import pytest

    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("pip install --no-deps facenet-pytorch==2.6.0")
    from skimage import data

    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest")
    photo = data.astronaut()
    cv2.imwrite(str(data_dir / manifest["path"].iloc[0]), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    two = np.concatenate([photo, photo], axis=1)  # two astronauts side by side
    cv2.imwrite(str(data_dir / manifest["path"].iloc[1]), cv2.cvtColor(two, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(data_dir / manifest["path"].iloc[2]), np.full((160, 160, 3), 90, np.uint8))  # no face
    small = manifest.iloc[:3].copy()
    small["bbox"] = [None, np.array([512 + 180, 60, 90, 110], np.float32), None]
    write_table(small, data_dir / "manifest.parquet", "manifest", {"classes": meta["classes"]})
    table = align(data_dir, detector="mtcnn", size=112).set_index("sample_id")
    ids = small["sample_id"]
    assert table.loc[ids[0], "status"] == "ok" and table.loc[ids[0], "score"] > 0.99
    assert table.loc[ids[1], "status"] == "ok" and table.loc[ids[1], "flags"] == "multi_face"
    assert table.loc[ids[2], "status"] == "no_face"
    table = align(data_dir, detector="mtcnn", size=112, no_face="center_crop").set_index("sample_id")
    assert table.loc[ids[2], "status"] == "ok" and table.loc[ids[2], "flags"] == "no_face,center_crop"


def test_parts_and_resume(data_dir, monkeypatch):
    import ferdata.align as mod

    monkeypatch.setattr(mod, "CHUNK", 10)  # 48 faces: 5 chunks
    first = align(data_dir, part=(1, 2))
    assert "total" in first.attrs and len(first) == 28  # chunks 0, 2, 4 = 10 + 10 + 8 faces
    assert not (data_dir / "aligned.parquet").exists() or pd.read_parquet(data_dir / "aligned.parquet").shape[0] == 48
    calls = []
    real = mod._align_one
    monkeypatch.setattr(mod, "_align_one", lambda job, settings: calls.append(job[0]) or real(job, settings))
    done = align(data_dir, workers=1)  # resumes: only part 2's chunks are left
    assert len(calls) == 20 and len(done) == 48 and "total" not in done.attrs
    assert not (data_dir / ".align-work").exists() and len(list((data_dir / "aligned").glob("*.jpg"))) == 48
    assert done["sample_id"].is_monotonic_increasing


def test_changed_settings_start_the_work_afresh(data_dir, monkeypatch):
    import ferdata.align as mod

    monkeypatch.setattr(mod, "CHUNK", 10)
    align(data_dir, part=(1, 5))
    table = align(data_dir, detector="none", size=64, part=(2, 5))
    assert len(table) == 10 and set(table["detector"]) == {"none"}
