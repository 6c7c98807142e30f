import numpy as np
import pytest

from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table
from ferdata.va import knn_graph, va


def test_knn_matches_brute_force_and_excludes_self():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (200, 2))
    ids = np.array([f"s{i:03d}" for i in range(200)])
    graph = knn_graph(ids, pts, 5)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    np.fill_diagonal(d, np.inf)
    for i, row in graph.iterrows():
        assert ids[i] not in row["neighbours"]
        expect = np.sort(d[i])[:5]
        assert np.allclose(row["distances"], expect, atol=1e-6)


def test_ties_break_by_id_order():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    ids = np.array(["a", "b", "c", "d", "e"])
    graph = knn_graph(ids, pts, 2)
    assert graph.loc[0, "neighbours"] == ["b", "c"]


def test_k_larger_than_dataset_and_too_small():
    graph = knn_graph(np.array(["a", "b", "c"]), np.zeros((3, 2)), 8)
    assert all(len(n) == 2 for n in graph["neighbours"])
    with pytest.raises(FerdataError, match="at least 2"):
        knn_graph(np.array(["a"]), np.zeros((1, 2)), 8)


def test_va_stage(data_dir):
    table, graph = va(data_dir, k=4)
    assert len(table) == 48 and (table["source"] == "provided").all()
    assert table[["valence", "arousal"]].abs().max().max() <= 1
    manifest, _ = read_table(data_dir / "manifest.parquet", "manifest")
    train = set(manifest.loc[manifest["split"] == "train", "sample_id"])
    assert set(graph["sample_id"]) == train
    assert all(set(n) <= train and len(n) == 4 for n in graph["neighbours"])
    with pytest.raises(FerdataError, match="unknown va.source 'emonet'"):
        va(data_dir, source="emonet")


def test_circumplex_va_from_posteriors(data_dir, tmp_path):
    import numpy as np
    import pandas as pd

    from ferdata.core.classes import VA_CENTROIDS
    from ferdata.core.io import write_table

    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest")
    classes = meta["classes"]
    with pytest.raises(FerdataError, match="run `ferdata prior`"):
        va(data_dir, source="circumplex")
    probs = np.zeros((len(manifest), len(classes)), np.float32)
    probs[:, classes.index("happy")] = 1.0
    probs[::2] = 1.0 / len(classes)  # every other face: uniform
    post = pd.DataFrame(
        {
            "sample_id": manifest["sample_id"],
            "split": manifest["split"],
            "distribution": list(probs),
            "uncertainty": 0.0,
        }
    )
    write_table(post, data_dir / "prior.parquet", "prior", {"classes": classes})
    table, _graph = va(data_dir, source="circumplex", k=3)
    assert (table["source"] == "circumplex").all()
    row = table.set_index("sample_id").loc[manifest["sample_id"].iloc[1]]
    assert np.allclose([row["valence"], row["arousal"]], VA_CENTROIDS["happy"], atol=1e-6)
    uniform = np.mean([VA_CENTROIDS[c] for c in classes], axis=0)
    row = table.set_index("sample_id").loc[manifest["sample_id"].iloc[0]]
    assert np.allclose([row["valence"], row["arousal"]], uniform, atol=1e-6)
    write_table(post.iloc[1:], data_dir / "prior.parquet", "prior", {"classes": classes})
    with pytest.raises(FerdataError, match="has no distribution for 1 faces"):
        va(data_dir, source="circumplex")


def test_ties_beyond_the_first_candidates_still_break_by_id():
    # 40 faces at one VA point (e.g. identical pseudo VA): a tree returns an arbitrary 17 of them
    pts = np.zeros((40, 2))
    ids = np.array([f"s{i:02d}" for i in range(40)])[::-1].copy()  # ids in reverse of point order
    graph = knn_graph(ids, pts, 3)
    assert graph.loc[0, "neighbours"] == ["s00", "s01", "s02"]  # the smallest ids, whatever the tree order
    assert graph.loc[39, "neighbours"] == ["s01", "s02", "s03"]  # self (s00) excluded


def _uniform_prior(data_dir, manifest, classes):
    import pandas as pd

    from ferdata.core.io import write_table

    probs = np.full((len(manifest), len(classes)), 1.0 / len(classes), np.float32)
    write_table(
        pd.DataFrame(
            {
                "sample_id": manifest["sample_id"],
                "split": manifest["split"],
                "distribution": list(probs),
                "uncertainty": 0.0,
            }
        ),
        data_dir / "prior.parquet",
        "prior",
        {"classes": classes},
    )


def test_sources_in_priority_order_fill_gaps(data_dir):
    from ferdata.core.io import write_table

    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest")
    manifest.loc[:4, "valence"] = np.nan  # five faces without annotated VA
    manifest.loc[5, "arousal"] = 1.7  # one out of range
    write_table(manifest, data_dir / "manifest.parquet", "manifest", meta)
    with pytest.raises(FerdataError, match=r"6 faces have no valid VA from provided, .*add a fallback source"):
        va(data_dir, source="provided")
    _uniform_prior(data_dir, manifest, meta["classes"])
    table, graph = va(data_dir, source="provided,circumplex", k=3)
    counts = table["source"].value_counts().to_dict()
    assert counts == {"provided": 42, "circumplex": 6} and len(graph) > 0


def test_csv_source_reads_the_ldlva_release_layout(data_dir, tmp_path):
    manifest, _meta = read_table(data_dir / "manifest.parquet", "manifest")
    rows = manifest.reset_index(drop=True)
    lines = ["subDirectory_filePath,expression,valence,arousal,knn"]
    train_rows = rows.index[rows["split"] == "train"].to_numpy()
    for i, r in rows.iterrows():
        nbrs = ";".join(str(train_rows[(i + d) % len(train_rows)]) for d in (1, 2, 3))
        lines.append(f"{r['path']},{r['label']},{r['valence']:.4f},{r['arousal']:.4f},{nbrs}")
    (tmp_path / "ldlva.csv").write_text("\n".join(lines) + "\n")
    table, graph = va(data_dir, source="csv", csv=tmp_path / "ldlva.csv", k=2, csv_knn=True)
    assert (table["source"] == "csv").all()
    assert np.allclose(table.set_index("sample_id").loc[rows["sample_id"], "valence"], rows["valence"], atol=1e-4)
    train_ids = set(rows.loc[rows["split"] == "train", "sample_id"])
    assert all(set(n) <= train_ids and len(n) <= 2 for n in graph["neighbours"])
    listed = {  # the CSV's own neighbour lists, as sample ids, self left out, the first k=2 kept
        r["sample_id"]: [
            s
            for s in (rows.loc[train_rows[(i + d) % len(train_rows)], "sample_id"] for d in (1, 2, 3))
            if s != r["sample_id"]
        ][:2]
        for i, r in rows.iterrows()
    }
    # (the graph orders them nearest first, as the computed one does)
    assert len(graph) and all(set(n) == set(listed[sid]) for sid, n in zip(graph["sample_id"], graph["neighbours"]))
    with pytest.raises(FerdataError, match="va.source csv needs va.csv"):
        va(data_dir, source="csv")


def test_regressor_source_reads_the_regress_stage(data_dir):
    from ferdata.train.regress import regress

    with pytest.raises(FerdataError, match="regressed_va.parquet not found: run `ferdata regress` first"):
        va(data_dir, source="regressor")
    regress(data_dir, epochs=1, folds=2, batch_size=8, image_size=32)
    table, _ = va(data_dir, source="regressor", k=3)
    assert (table["source"] == "regressor").all() and len(table) == 48
    assert table[["valence", "arousal"]].abs().max().max() <= 1


def _tiny_va_onnx(path):
    """An ONNX model: per-channel mean of the input -> 2 outputs -> tanh (a stand-in for a VA net)."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1.0, 0.0, 0.0, 1.0, -1.0, -1.0])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["z"]),
            helper.make_node("Tanh", ["z"], ["va"]),
        ],
        "va",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("va", TensorProto.FLOAT, ["n", 2])],
        [weights],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_onnx_source_runs_a_user_model(data_dir, tmp_path):
    _tiny_va_onnx(tmp_path / "va.onnx")
    table, _ = va(
        data_dir,
        source="onnx",
        k=3,
        onnx={"model": str(tmp_path / "va.onnx"), "input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    )
    assert (table["source"] == "onnx").all() and table[["valence", "arousal"]].abs().max().max() < 1
    assert table["valence"].std() > 0  # depends on the face
    with pytest.raises(FerdataError, match="va.onnx.model .*nope.onnx not found"):
        va(data_dir, source="onnx", onnx={"model": str(tmp_path / "nope.onnx")})
