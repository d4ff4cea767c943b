"""igrec export: checkpoint -> artefact, parity with PyTorch on a test split, dynamic sizes, loud failures.

Small seeded random-weight networks (a few hundred items) stand in for trained checkpoints: parity is a
property of the export, not of the weights.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from export.artefact import (  # noqa: E402
    CARD_FILE,
    INT8_MAX_SCORE_DIFF,
    INT8_MIN_IDENTICAL,
    INTERESTS_FILE,
    ITEMS_FILE,
    MODEL_FILE,
    read_items,
    sha256_file,
)
from export.cli import main as export_main  # noqa: E402
from export.exporter import ExportOptions, build_artefact  # noqa: E402
from export.parity import ParityError, torch_log_probs  # noqa: E402
from export.scorer import Scorer  # noqa: E402
from model.data import read_split  # noqa: E402
from model.graphs import build_history_graphs, build_session_graphs  # noqa: E402
from model.network import ModelConfig, build_network  # noqa: E402

N_ITEMS = 300


def _split(folder, n_items=N_ITEMS, seed=0):
    """A split folder in the shared text format: random sessions, every prefix of the last 30 as test."""
    rng = np.random.default_rng(seed)
    sessions = [rng.integers(1, n_items + 1, rng.integers(2, 25)).tolist() for _ in range(110)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_sessions.txt").write_text("\n".join(" ".join(map(str, s)) for s in sessions[:80]) + "\n")
    lines = [f"{' '.join(map(str, s[:i]))}\t{s[i]}" for s in sessions[80:] for i in range(1, len(s))]
    (folder / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def _checkpoint(path, config, seed=0, **extra):
    """A checkpoint in the training format (``model`` state dict + ``config`` dict) with seeded weights and,
    for IGRec, random global and co-occurrence graphs (so the neighbour-table initializers are exercised).

    The item embeddings are scaled up: at their init scale the scores of an untrained network are nearly
    uniform, and pairs closer than float32 noise swap places in a top-K, which parity would count against
    the export although both sides are right. Trained networks have peaked scores, like the scaled ones.
    """
    torch.manual_seed(seed)
    net = build_network(config).eval()
    with torch.no_grad():
        net.item_encoder.table().mul_(4.0)
    if getattr(net, "global_neighbors", None) is not None:
        gen = torch.Generator().manual_seed(seed)
        net.global_neighbors.copy_(torch.randint(0, config.n_items + 1, net.global_neighbors.shape, generator=gen))
        net.global_weights.copy_(torch.rand(net.global_weights.shape, generator=gen) * 4)
    if getattr(net, "prior_neighbors", None) is not None:
        gen = torch.Generator().manual_seed(seed + 1)
        neighbors = torch.randint(0, config.n_items + 1, net.prior_neighbors.shape, generator=gen)
        net.set_prior_graph(neighbors, torch.rand(neighbors.shape, generator=gen) * (neighbors > 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": config.to_dict(), "train": {"max_len": 50}, **extra}, path)
    return net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(network, artefact folder, split folder): IGRec with every option on, exported through the CLI."""
    root = tmp_path_factory.mktemp("export")
    data = _split(root / "split")
    config = ModelConfig(n_items=N_ITEMS, dim=24, interests=3, steps=2, use_prior=True, prior_neighbors=6)
    net = _checkpoint(root / "run" / "best.pt", config)
    (root / "run" / "results.json").write_text(json.dumps({"dataset": "toy", "test": {"HR@20": 1.5}}))
    export_main(["export", str(root / "run" / "best.pt"), "--out", str(root / "art"), "--data", str(data),
                 "--parity-cases", "0", "--batch-size", "64"])
    return net, root / "art", data


def test_artefact_has_model_vocabulary_and_card_with_checksums(exported):
    _, art, _ = exported
    card = json.loads((art / CARD_FILE).read_text())
    assert card["format"] == "igrec-onnx-artefact" and card["format_version"] == 1
    assert card["k"] == 20 and card["n_items"] == N_ITEMS and card["onnx"]["opset"] == 18
    assert card["files"] == {name: sha256_file(art / name) for name in (INTERESTS_FILE, ITEMS_FILE, MODEL_FILE)}
    assert card["dataset"]["name"] == "toy" and card["metrics"]["test"]["HR@20"] == 1.5
    assert card["model"]["steps"] == 2 and len(card["git"]["commit"] or "x" * 40) == 40
    assert [i["name"] for i in card["onnx"]["inputs"]] == ["items", "alias", "adj", "mask", "hist_items", "hist_adj"]
    assert card["onnx"]["outputs"][0]["shape"] == ["batch", 20]
    assert read_items(art / ITEMS_FILE)[1:4] == ["1", "2", "3"]
    assert not (art.parent / "art.partial").exists()
    assert card["parity"]["passed"] and card["parity"]["source"] == "test"
    assert card["model_version"].startswith("toy-") and card["model_version"].endswith(card["files"][MODEL_FILE][:12])


def test_exported_graph_has_no_control_flow(exported):
    """Every shape the exporter traces is static where it can be, so the graph has no ``If`` node (which would
    split a TensorRT engine) even with two GGNN steps and the co-occurrence prior."""
    _, art, _ = exported
    ops = {node.op_type for node in onnx.load(str(art / MODEL_FILE)).graph.node}
    assert "TopK" in ops and not ops & {"If", "Loop", "Scan"}


def test_interest_table_is_the_networks_inference_assignment(exported):
    """interests.npy holds softmax(v_i^T W_l / tau) per item (eqs. 1-3 at inference), which the worker reads."""
    net, art, _ = exported
    table = Scorer(art, providers="cpu").interests
    with torch.no_grad():
        ids = torch.arange(1, N_ITEMS + 1)
        expected = net.eval()._interest_weights(net.item_encoder(ids)).numpy()
    assert table.shape == (N_ITEMS + 1, 3) and table.dtype == np.float32
    assert np.allclose(table[1:], expected, atol=1e-6) and not table[0].any()
    assert np.allclose(table[1:].sum(1), 1.0, atol=1e-5)
    assert table[1:].argmax(1).min() != table[1:].argmax(1).max(), "items spread over more than one interest"


def test_parity_on_the_test_split(exported):
    """The export command's own check covered every test prefix, with and without history."""
    _, art, data = exported
    parity = json.loads((art / CARD_FILE).read_text())["parity"]
    assert parity["cases"] == len(read_split(data).test) > 300
    assert parity["identical"] == 1.0 and parity["max_score_diff"] <= 1e-4, parity
    assert parity["max_item_score_diff"] <= 1e-4
    assert 0 < parity["with_history"] < parity["cases"]


@pytest.mark.parametrize("batch,length", [(1, 1), (5, 50), (70, 37)])
def test_dynamic_batch_and_graph_sizes(exported, batch, length):
    """B, N, L and H unlike the 3-session example the graph was traced with; top-K shapes, order, parity."""
    net, art, _ = exported
    scorer = Scorer(art, providers="cpu", history=True)
    rng = np.random.default_rng(batch)
    sessions = [rng.integers(1, N_ITEMS + 1, rng.integers(1, length + 1)).tolist() for _ in range(batch)]
    histories = [[rng.integers(1, N_ITEMS + 1, 30).tolist(), [1, 2, 1]] if b % 2 else [] for b in range(batch)]
    graphs, history = build_session_graphs(sessions), build_history_graphs(histories)
    items, scores = scorer.recommend(graphs, history)
    assert items.shape == scores.shape == (batch, 20)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert (np.diff(scores, axis=1) <= 0).all() and (items > 0).all()
    ref = torch.topk(torch.from_numpy(torch_log_probs(net, graphs, history)), 20, dim=-1)
    np.testing.assert_array_equal(items, ref.indices.numpy())
    np.testing.assert_allclose(scores, ref.values.numpy(), atol=1e-4)


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_the_graph_cut_at_its_head_scores_as_the_whole_graph(exported, int8):
    """On the CPU a mixed batch runs the network per size bucket and the item head once over every row
    (``export.split``), its inputs padded to the widest bucket: the answers of the whole graph run per
    bucket, with every head input of a network with all options (the prior's int64 ids included)."""
    _, art, _ = exported
    scorer = Scorer(art, providers="cpu", history=True, int8=int8)
    assert scorer._split is not None
    assert scorer._split.cut == ["head.query", "head.prior_ids", "head.prior_bias", "head.node_logp", "head.gate"]
    rng = np.random.default_rng(11)
    sessions = [rng.integers(1, N_ITEMS + 1, n).tolist() for n in rng.choice([1, 2, 3, 6, 12, 40], 90)]
    histories = [[rng.integers(1, N_ITEMS + 1, 9).tolist(), [5, 6]] if b % 3 else [] for b in range(90)]
    graphs, history = build_session_graphs(sessions), build_history_graphs(histories)
    items, scores = scorer.recommend(graphs, history)
    scorer._split = None
    ref_items, ref_scores = scorer.recommend(graphs, history)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


def test_the_head_runs_in_near_equal_row_slices_with_the_whole_graphs_answers(exported):
    """A call of more than HEAD_ROWS sessions runs the head in slices, one size bucket or several."""
    from export.scorer import HEAD_ROWS, size_buckets

    _, art, _ = exported
    scorer = Scorer(art, providers="cpu")
    head, slices = scorer._split.head, []

    class Recording:
        def run(self, outputs, feeds):
            slices.append(len(feeds["items"]))
            return head.run(outputs, feeds)

    scorer._split.head = Recording()
    rng = np.random.default_rng(12)
    one_bucket = [(rng.choice(N_ITEMS, 3, replace=False) + 1).tolist() for _ in range(2 * HEAD_ROWS + 5)]
    graphs = build_session_graphs(one_bucket)
    assert len(size_buckets(graphs)) == 1
    items, scores = scorer.recommend(graphs)
    assert len(slices) == 3 and sum(slices) == 2 * HEAD_ROWS + 5
    assert max(slices) <= HEAD_ROWS and max(slices) - min(slices) <= 1
    scorer._split = None
    ref_items, ref_scores = scorer.recommend(graphs)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


def test_a_graph_that_cannot_be_cut_cleanly_is_not_cut(exported):
    """No cut without the exporter's list of head inputs, nor where the head would read more of the network
    than the listed tensors (then each bucket runs the whole graph)."""
    from export.split import HEAD_METADATA, split_at_head

    model = onnx.load(str(exported[1] / MODEL_FILE))
    assert split_at_head(model) is not None
    meta = next(p for p in model.metadata_props if p.key == HEAD_METADATA)
    meta.value = "head.query,head.prior_ids,head.prior_bias"
    assert split_at_head(model) is None
    model.metadata_props.remove(meta)
    assert split_at_head(model) is None


def test_no_history_equals_empty_history(exported):
    _, art, _ = exported
    scorer = Scorer(art, providers="cpu", history=True)
    sessions = [[3, 4, 3, 9], [7]]
    a = scorer.recommend_sessions(sessions)
    b = scorer.recommend_sessions(sessions, [[], []])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_history_is_fed_only_when_trained_with_it(exported):
    """A checkpoint trained without histories (the card says so) scores every session as training did."""
    _, art, _ = exported
    card = json.loads((art / CARD_FILE).read_text())
    assert card["graphs"]["history_trained"] is False
    sessions, histories = [[3, 4, 3, 9], [7]], [[[10, 11, 12]], [[5, 6], [8]]]
    default = Scorer(art, providers="cpu")
    assert default.has_history_inputs and not default.uses_history
    np.testing.assert_array_equal(default.recommend_sessions(sessions, histories)[1],
                                  default.recommend_sessions(sessions)[1])
    forced = Scorer(art, providers="cpu", history=True)
    assert not np.allclose(forced.recommend_sessions(sessions, histories)[1], forced.recommend_sessions(sessions)[1])


def test_a_different_network_fails_parity_loudly_and_is_not_published(tmp_path, monkeypatch):
    """The artefact of one network checked against another: ParityError, nothing at --out."""
    import export.exporter as exporter

    data = _split(tmp_path / "split")
    config = ModelConfig(n_items=N_ITEMS, dim=16)
    _checkpoint(tmp_path / "best.pt", config, seed=0)
    other = build_network(config).eval()
    real_export = exporter.export_onnx
    monkeypatch.setattr(exporter, "export_onnx", lambda net, *a, **kw: real_export(other, *a, **kw))
    with pytest.raises(ParityError, match="FAILED"):
        build_artefact(ExportOptions(checkpoint=str(tmp_path / "best.pt"), out=str(tmp_path / "art"),
                                     data=str(data), parity_cases=300))
    assert not (tmp_path / "art").exists()
    assert json.loads((tmp_path / "art.partial" / CARD_FILE).read_text())["parity"]["passed"] is False


@pytest.mark.parametrize("config", [ModelConfig.srgnn(N_ITEMS, dim=16),
                                    ModelConfig(n_items=N_ITEMS, dim=16, arch="gru4rec"),
                                    ModelConfig(n_items=N_ITEMS, dim=16, interests=1, use_global=False,
                                                use_history=False, use_repeat=False, normalize=False)],
                         ids=["srgnn", "gru4rec", "igrec-minimal"])
def test_other_architectures_export_with_parity(tmp_path, config):
    data = _split(tmp_path / "split")
    _checkpoint(tmp_path / "best.pt", config)
    out, report = build_artefact(ExportOptions(checkpoint=str(tmp_path / "best.pt"), out=str(tmp_path / "art"),
                                               data=str(data), parity_cases=400, k=10))
    assert report.passed and report.identical == 1.0, report.summary()
    scorer = Scorer(out, providers="cpu")
    assert not scorer.has_history_inputs and not scorer.uses_history and scorer.k == 10
    assert scorer.recommend_sessions([[1, 2, 3]], [[[4, 5]]])[0].shape == (1, 10)


def test_checkpoint_vocabulary_becomes_the_item_table(tmp_path):
    config = ModelConfig(n_items=N_ITEMS, dim=16, use_global=False)
    vocab = [f"sku-{i * 7}" for i in range(1, N_ITEMS + 1)]
    _checkpoint(tmp_path / "best.pt", config, item_vocab=vocab)
    out, _ = build_artefact(ExportOptions(checkpoint=str(tmp_path / "best.pt"), out=str(tmp_path / "art"),
                                          parity_cases=200, history_trained=True))
    scorer = Scorer(out, providers="cpu")
    assert scorer.uses_history
    assert scorer.card["dataset"]["vocabulary"] == "checkpoint" and scorer.card["parity"]["source"] == "synthetic"
    np.testing.assert_array_equal(scorer.index_of(["sku-7", "nope", "sku-2100"]), [1, 0, N_ITEMS])
    assert scorer.external_ids(np.array([[1, N_ITEMS]])).tolist() == [["sku-7", "sku-2100"]]


def test_existing_output_needs_force(exported, tmp_path):
    _, art, _ = exported
    with pytest.raises(FileExistsError):
        build_artefact(ExportOptions(checkpoint="unused.pt", out=str(art)))


def test_parity_command_rechecks_a_published_artefact(exported, tmp_path, capsys):
    """igrec parity: the card's checkpoint, the chosen provider, a JSON report; the artefact is unchanged."""
    _, art, data = exported
    before = (art / CARD_FILE).read_text()
    export_main(["parity", str(art), "--provider", "cpu", "--data", str(data), "--cases", "150",
                 "--json", str(tmp_path / "parity.json")])
    assert "parity PASSED (CPU) on 150 test cases" in capsys.readouterr().out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and report["provider"] == "CPUExecutionProvider" and not report["fp16"]
    assert report["identical"] == 1.0 and report["cases"] == 150
    assert (art / CARD_FILE).read_text() == before


def test_parity_command_refuses_another_checkpoint_and_misses_loudly(exported, tmp_path, capsys):
    """Another network's weights are refused by sha256; a bar the figures miss exits 2."""
    _, art, data = exported
    card = json.loads((art / CARD_FILE).read_text())
    other = tmp_path / "other.pt"
    _checkpoint(other, ModelConfig.from_dict(card["model"]), seed=5)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["parity", str(art), "--checkpoint", str(other), "--data", str(data), "--provider", "cpu"])
    assert exit_info.value.code == 1 and "is not the checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        export_main(["parity", str(art), "--data", str(data), "--provider", "cpu", "--cases", "50",
                     "--min-identical", "1.01"])
    assert exit_info.value.code == 2 and "parity FAILED (CPU)" in capsys.readouterr().out


def test_parity_command_holds_int8_to_its_own_bars(exported, tmp_path, capsys):
    """igrec parity --int8 (here with the co-occurrence prior, whose scatter the int8 product feeds): the
    int8 bars unless overridden, the float32 top-K sets, the report says int8."""
    _, art, data = exported
    export_main(["parity", str(art), "--provider", "cpu", "--data", str(data), "--cases", "150", "--int8",
                 "--json", str(tmp_path / "parity.json")])
    assert "parity PASSED (CPU int8) on 150 test cases" in capsys.readouterr().out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["int8"] and report["min_identical"] == INT8_MIN_IDENTICAL
    assert report["max_allowed_diff"] == INT8_MAX_SCORE_DIFF and report["same_set"] == 1.0
    with pytest.raises(SystemExit) as exit_info:
        export_main(["parity", str(art), "--provider", "cpu", "--data", str(data), "--cases", "150", "--int8",
                     "--max-diff", "1e-9"])
    assert exit_info.value.code == 2 and "parity FAILED (CPU int8)" in capsys.readouterr().out
