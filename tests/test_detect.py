"""ferdata/detect.py: MTCNN on a real photo, NMS, face choice; weights read from facenet-pytorch's files."""

import importlib.util

import numpy as np
import pytest

from ferdata.align import choose_face
from ferdata.core.errors import FerdataError
from ferdata.detect import Face, find_weights, nms

HAS_WEIGHTS = importlib.util.find_spec("facenet_pytorch") is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="pip install --no-deps facenet-pytorch==2.6.0")


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    assert nms(boxes, np.array([0.8, 0.9, 0.5]), 0.5).tolist() == [1, 2]
    inner = np.array([[0, 0, 100, 100], [10, 10, 30, 30]], float)
    assert nms(inner, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(inner, np.array([0.9, 0.8]), 0.5, mode="min").tolist() == [0]


def test_choose_face_prefers_the_dataset_box_else_large_and_central():
    faces = [
        Face(np.array([0, 0, 40, 40.0]), 0.99, np.zeros((5, 2))),
        Face(np.array([80, 80, 120, 120.0]), 0.95, np.zeros((5, 2))),
        Face(np.array([150, 150, 199, 199.0]), 0.99, np.zeros((5, 2))),
    ]
    assert choose_face(faces, None, (200, 200, 3)) == 1
    assert choose_face(faces, np.array([5, 5, 30, 30]), (200, 200, 3)) == 0


def test_missing_weights_is_one_clear_error(tmp_path):
    with pytest.raises(FerdataError, match="lacks pnet.pt, rnet.pt, onet.pt: pip install --no-deps facenet-pytorch"):
        find_weights(tmp_path)


@needs_weights
def test_mtcnn_finds_the_astronaut_and_her_eyes():
    from skimage import data

    from ferdata.detect import MTCNN

    faces = MTCNN(device="cpu").detect(data.astronaut())
    assert len(faces) == 1 and faces[0].score > 0.999
    assert np.abs(faces[0].box - [181, 62, 268, 172]).max() < 12
    left_eye, right_eye = faces[0].landmarks[:2]
    assert np.abs(left_eye - [203, 100]).max() < 8 and np.abs(right_eye - [246, 103]).max() < 8
    assert faces[0].landmarks[2, 1] > left_eye[1]  # the nose is below the eyes


@needs_weights
def test_mtcnn_finds_nothing_in_a_blank_image():
    from ferdata.detect import MTCNN

    assert MTCNN(device="cpu").detect(np.full((200, 200, 3), 127, np.uint8)) == []


def test_insightface_without_model_files_is_one_clear_error(tmp_path, data_dir):
    from ferdata.align import align

    with pytest.raises(FerdataError, match=r"needs a SCRFD or RetinaFace ONNX file .* never downloads it"):
        align(data_dir, detector="insightface", insightface_models=str(tmp_path))
