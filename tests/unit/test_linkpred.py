"""Link prediction: GATNE reader, item-graph hold-out, hand-computed metrics, learning, facts, checkpoints."""

import json

import numpy as np
import pytest

from model.linkpred_data import LinkData, LinkPredConfig, build_item_graph, read_gatne, write_gatne
from model.metrics import (
    average_precision,
    average_ranks,
    f1_at_true_count,
    filtered_ranks,
    link_prediction_metrics,
    mean_reciprocal_rank,
    pr_auc,
    roc_auc,
)

# --- metrics on hand-computed cases -------------------------------------------------------------------------

LABELS = np.array([1, 0, 1, 0])
SCORES = np.array([0.9, 0.9, 0.5, 0.1])


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_roc_auc_counts_a_tie_as_half():
    # pos/neg pairs: (.9,.9) tie 1/2, (.9,.1) 1, (.5,.9) 0, (.5,.1) 1 -> 2.5 / 4
    assert roc_auc(LABELS, SCORES) == pytest.approx(0.625)
    assert roc_auc(np.array([1, 0, 1]), np.array([1.0, 1.0, 1.0])) == pytest.approx(0.5)
    assert roc_auc(np.array([0, 1]), np.array([0.2, 0.7])) == pytest.approx(1.0)


def test_pr_auc_trapezoid_and_average_precision():
    # PR points: start (R0, P1); >=.9: tp1 of 2 -> (R.5, P.5); >=.5: (R1, P2/3); >=.1: (R1, P.5)
    # trapezoid: .5*(1+.5)/2 + .5*(.5+2/3)/2 = .375 + .291667 = 2/3; AP: .5*.5 + .5*2/3 = 7/12
    assert pr_auc(LABELS, SCORES) == pytest.approx(2 / 3)
    assert average_precision(LABELS, SCORES) == pytest.approx(7 / 12)
    assert pr_auc(np.array([1, 1, 0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(1.0)


def test_f1_threshold_predicts_as_many_positives_as_true_edges():
    # 2 true edges -> threshold = 2nd highest score .5 -> predicted {.8, .5}, one of them true: F1 = 2/(2+2)
    assert f1_at_true_count(np.array([1, 1, 0, 0, 0]), np.array([0.8, 0.3, 0.5, 0.2, 0.1])) == pytest.approx(0.5)
    # ties at the threshold all count as predicted: threshold .9 -> 2 predicted, 1 true -> .5
    assert f1_at_true_count(LABELS, SCORES) == pytest.approx(0.5)
    assert f1_at_true_count(np.array([1, 0, 1, 0]), np.array([4.0, 1.0, 3.0, 2.0])) == pytest.approx(1.0)


def test_metrics_average_over_edge_types_unweighted():
    types = np.array(["a"] * 2 + ["b"] * 6)
    labels = np.array([1, 0, 1, 1, 1, 0, 0, 0])
    scores = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # type a perfect, type b reversed
    res = link_prediction_metrics(types, labels, scores)
    assert res["per_type"]["a"]["ROC-AUC"] == pytest.approx(100.0)
    assert res["per_type"]["b"]["ROC-AUC"] == pytest.approx(0.0)
    assert res["mean"]["ROC-AUC"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_filtered_ranks_remove_known_tails_and_ties_count_against():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.5, 0.1, 0.9]])
    known = np.array([[True, False, False, False], [False, False, False, False]])
    ranks = filtered_ranks(scores, np.array([2, 0]), known)
    np.testing.assert_array_equal(ranks, [2, 3])  # row 0: .8 beats (.9 filtered); row 1: tie .5 and .9
    assert mean_reciprocal_rank(ranks) == pytest.approx(100 * (1 / 2 + 1 / 3) / 2)


# --- data -----------------------------------------------------------------------------------------------------


def test_read_gatne_maps_arbitrary_ids_and_appends_unseen_nodes(tmp_path):
    (tmp_path / "train.txt").write_text("co_view a b\nco_buy b c\nco_view c a\n")
    (tmp_path / "valid.txt").write_text("co_view a c 1\nco_buy a b 0\n")
    (tmp_path / "test.txt").write_text("co_buy c zz 1\nco_view b 17 0\n")
    d = read_gatne(tmp_path)
    assert d.relations == ["co_view", "co_buy"]
    assert d.nodes[:3] == ["a", "b", "c"] and d.n_seen == 3 and set(d.nodes[3:]) == {"zz", "17"}
    np.testing.assert_array_equal(d.train, [[0, 0, 1], [1, 1, 2], [0, 2, 0]])
    np.testing.assert_array_equal(d.test_labels, [1, 0])
    assert d.summary()["test_pairs_with_unseen_node"] == 2
    assert (1, 2, 1) in d.known_edges() and (1, 2, d.nodes.index("zz")) in d.known_edges()
    write_gatne(d, tmp_path / "copy")
    again = read_gatne(tmp_path / "copy")
    assert again.nodes == d.nodes and np.array_equal(again.test, d.test) and np.array_equal(again.valid, d.valid)


def test_item_graph_holds_out_edges_with_balanced_negatives(tmp_path):
    rng = np.random.default_rng(1)
    sessions = [" ".join(str(x) for x in rng.integers(1, 40, size=6)) for _ in range(120)]
    (tmp_path / "train_sessions.txt").write_text("\n".join(sessions) + "\n")
    (tmp_path / "kg.txt").write_text("".join(f"{i} {i % 2} {100 + i % 5}\n" for i in range(1, 40)))
    (tmp_path / "relations.txt").write_text("cat_id:0\nbrand_id:1\n")
    d = build_item_graph(tmp_path, co_window=3, valid_share=0.1, test_share=0.2, seed=0)
    assert d.relations[:2] == ["next", "co_session"] and {"cat", "brand"} <= set(d.relations)
    assert d.eval_relations == [0, 1]
    train = set(map(tuple, d.train.tolist())) | set(map(tuple, d.train[:, [0, 2, 1]].tolist()))
    for pairs, labels in ((d.valid, d.valid_labels), (d.test, d.test_labels)):
        assert labels.sum() * 2 == len(labels) and labels.sum() > 0
        assert not any(tuple(p) in train for p in pairs.tolist())
    nxt = {tuple(sorted((d.nodes[h], d.nodes[t]))) for r, h, t in d.test[d.test_labels == 1].tolist() if r == 0}
    consecutive = {tuple(sorted((a, b))) for s in sessions for a, b in zip(s.split(), s.split()[1:], strict=False)}
    assert nxt <= consecutive
    assert all(d.nodes[t].startswith("e") for r, _, t in d.train.tolist() if r >= 2)


# --- model ----------------------------------------------------------------------------------------------------


def two_cliques(size: int = 8) -> tuple[LinkData, set]:
    """Two disconnected cliques, each pair's relation ``(i + j) % 2``; some pairs held out or missing."""
    a, b = list(range(size)), list(range(size, 2 * size))
    inside = [(i, j) for c in (a, b) for i in c for j in c if i < j]
    pairs = {r: [(i, j) for i, j in inside if (i + j) % 2 == r] for r in (0, 1)}
    rng = np.random.default_rng(0)
    train, test, missing = [], [], set()
    for r, ps in pairs.items():
        order = rng.permutation(len(ps))
        for k, idx in enumerate(order):
            i, j = ps[idx]
            if k < 4:
                test.append((r, i, j, 1))
            elif k < 5:
                missing.add((r, i, j))
            else:
                train.append((r, i, j))
    for r in (0, 1):
        for _ in range(4):
            test.append((r, int(rng.integers(0, size)), int(rng.integers(size, 2 * size)), 0))
    test_arr = np.array(test, np.int64)
    data = LinkData(nodes=[f"n{i}" for i in range(2 * size)], relations=["x", "y"], n_seen=2 * size,
                    train=np.array(train, np.int64), valid=test_arr[:, :3], valid_labels=test_arr[:, 3],
                    test=test_arr[:, :3], test_labels=test_arr[:, 3])
    return data, missing


@pytest.fixture(scope="module")
def trained():
    torch = pytest.importorskip("torch")
    from model.linkpred import train_model

    torch.manual_seed(0)
    data, missing = two_cliques()
    cfg = LinkPredConfig(data="", dim=16, layers=1, epochs=40, chunks=2, lr=0.02, patience=40, threads=1)
    model, fit = train_model(cfg, data, progress=False)
    return model, cfg, data, missing, fit


def test_model_learns_two_cliques(trained):
    from model.linkpred import evaluate_model

    model, cfg, data, _, fit = trained
    res = evaluate_model(model, cfg, data)
    assert res["test"]["all"]["mean"]["ROC-AUC"] > 90.0
    assert fit["history"][-1]["loss"] < fit["history"][0]["loss"]
    assert res["test"]["MRR"] > 0.0 and res["test"]["MRR_queries"] == 8


def test_facts_are_new_links_only(trained):
    from model.facts import to_json_line
    from model.linkpred import predict_facts

    model, _, data, missing, _ = trained
    facts = predict_facts(model, data, threshold=0.0, top_k=3)
    known = {(data.relations[r], data.nodes[h], data.nodes[t]) for r, h, t in data.known_edges()}
    assert facts
    for f in facts:
        assert f.head_label == f.tail_label == "Item" and f.rel == "RELATED" and f.head_id != f.tail_id
        assert (f.props["type"], f.head_id, f.tail_id) not in known
        assert 0.0 <= f.props["score"] <= 1.0
    found = {(f.props["type"], *sorted((f.head_id, f.tail_id))) for f in facts}
    assert {(data.relations[r], *sorted((data.nodes[i], data.nodes[j]))) for r, i, j in missing} <= found
    line = json.loads(to_json_line(facts[0]))
    assert list(line) == ["head_label", "head_id", "rel", "tail_label", "tail_id", "props"]
    high = predict_facts(model, data, threshold=0.999999, top_k=3)
    assert len(high) < len(facts)


def test_checkpoint_round_trip(trained, tmp_path):
    import torch

    from model.linkpred import full_graph, load_checkpoint, save_checkpoint, score_pairs

    model, cfg, data, _, _ = trained
    save_checkpoint(tmp_path / "best.pt", model, cfg, data, epoch=3)
    loaded, cfg2, _ = load_checkpoint(tmp_path / "best.pt", data)
    assert cfg2 == cfg
    with torch.no_grad():
        z1, z2 = model.encode(*full_graph(data)), loaded.encode(*full_graph(data))
    np.testing.assert_allclose(score_pairs(model, z1, data.test), score_pairs(loaded, z2, data.test), rtol=1e-6)
    other = LinkData(nodes=data.nodes[::-1], relations=data.relations, n_seen=data.n_seen, train=data.train)
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "best.pt", other)


def test_common_neighbours_baseline_separates_cliques():
    from model.linkpred_data import heuristic_scores

    data, _ = two_cliques()
    cn = heuristic_scores(data, data.test, "cn")
    assert cn[data.test_labels == 1].min() > cn[data.test_labels == 0].max()
    pa = heuristic_scores(data, np.array([[0, 0, 1]]), "pa")
    deg = [len({t for _, h, t in data.train.tolist() if h == n} | {h for _, h, t in data.train.tolist() if t == n})
           for n in (0, 1)]
    assert pa[0] == deg[0] * deg[1]


def test_corruptions_keep_one_end_and_draw_from_the_relation():
    torch = pytest.importorskip("torch")
    from model.linkpred import Corruptor

    train = np.array([(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 4, 5), (1, 5, 6), (1, 6, 7)], np.int64)
    data = LinkData(nodes=[str(i) for i in range(8)], relations=["x", "y"], n_seen=8, train=train)
    pos = torch.as_tensor(data.train)
    neg = Corruptor(data, "relation")(pos, 3, torch.Generator().manual_seed(0))
    assert neg.shape == (3 * len(pos), 3)
    rep = pos.repeat(3, 1)
    assert ((neg[:, 1] == rep[:, 1]) | (neg[:, 2] == rep[:, 2])).all()
    for r in (0, 1):
        allowed = set(data.relation_nodes(r).tolist())
        assert set(neg[neg[:, 0] == r][:, 1:].flatten().tolist()) <= allowed
    everywhere = Corruptor(data, "all")(pos, 20, torch.Generator().manual_seed(0))
    assert set(everywhere[everywhere[:, 0] == 0][:, 1:].flatten().tolist()) - set(data.relation_nodes(0).tolist())
