"""Session-graph construction: hand-computed adjacency, aliases, padding, history and global graphs."""

import subprocess
import sys

import numpy as np
import pytest

from model.graphs import (
    build_global_graph,
    build_history_graphs,
    build_session_graphs,
    pad_sessions,
)


def test_known_session_matches_hand_computed_adjacency():
    # Session 5 -> 7 -> 9 -> 7 -> 3; nodes in ascending id order: 3, 5, 7, 9 (indices 0..3).
    g = build_session_graphs([[5, 7, 9, 7, 3]])
    np.testing.assert_array_equal(g.items, [[3, 5, 7, 9]])
    np.testing.assert_array_equal(g.alias, [[1, 2, 3, 2, 0]])
    # Edges 5->7, 7->9, 9->7, 7->3.
    a_in = np.array([[0, 0, 1, 0],      # 3 <- 7
                     [0, 0, 0, 0],      # 5 has no in-edge
                     [0, 0.5, 0, 0.5],  # 7 <- 5, 9
                     [0, 0, 1, 0]])     # 9 <- 7
    a_out = np.array([[0, 0, 0, 0],
                      [0, 0, 1, 0],      # 5 -> 7
                      [0.5, 0, 0, 0.5],  # 7 -> 3, 9
                      [0, 0, 1, 0]])     # 9 -> 7
    np.testing.assert_allclose(g.adj[0], np.concatenate([a_in, a_out], 1))
    assert g.adj.dtype == np.float32 and g.items.dtype == np.int64 and g.alias.dtype == np.int64


def test_repeated_edge_counts_versus_binary():
    # 1->2 twice, 1->3 once: count weighting gives 2/3, 1/3; binary gives 1/2, 1/2.
    seq = [[1, 2, 1, 2, 1, 3]]
    counted = build_session_graphs(seq)
    binary = build_session_graphs(seq, binary=True)
    n = 3
    np.testing.assert_allclose(counted.adj[0, 0, n:], [0, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(binary.adj[0, 0, n:], [0, 0.5, 0.5])


def test_batch_padding_and_mask():
    g = build_session_graphs([[4, 4], [1, 2, 3], [8]])
    assert g.items.shape == (3, 3) and g.alias.shape == (3, 3) and g.adj.shape == (3, 3, 6)
    np.testing.assert_array_equal(g.items, [[4, 0, 0], [1, 2, 3], [8, 0, 0]])
    np.testing.assert_array_equal(g.mask, [[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(g.alias[0, :2], [0, 0])
    # Self loop 4->4: in and out weight 1; the single-click session has no edges at all.
    assert g.adj[0, 0, 0] == 1 and g.adj[0, 0, 3] == 1
    assert not g.adj[2].any()
    # Each nonzero row of each block sums to 1.
    for block in (g.adj[:, :, :3], g.adj[:, :, 3:]):
        sums = block.sum(-1)
        np.testing.assert_allclose(sums[sums > 0], 1.0, rtol=1e-6)


def test_max_len_keeps_last_clicks_and_matches_padded_input():
    g = build_session_graphs([[1, 2, 3, 4, 5]], max_len=3)
    np.testing.assert_array_equal(g.items, [[3, 4, 5]])
    padded = pad_sessions([[9, 8, 7], [6]])
    np.testing.assert_array_equal(padded, [[9, 8, 7], [6, 0, 0]])
    a = build_session_graphs([[9, 8, 7], [6]])
    b = build_session_graphs(padded)
    for x, y in zip(a.arrays(), b.arrays(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_every_click_alias_points_to_its_item():
    rng = np.random.default_rng(0)
    sessions = [rng.integers(1, 20, size=rng.integers(1, 15)).tolist() for _ in range(64)]
    g = build_session_graphs(sessions)
    for b, s in enumerate(sessions):
        np.testing.assert_array_equal(g.items[b, g.alias[b, : len(s)]], s)
        assert sorted(set(s)) == g.items[b, : len(set(s))].tolist()


def test_history_graph_breaks_between_sessions():
    h = build_history_graphs([[[1, 2], [3, 4]], []])
    # Nodes 1,2,3,4; edges 1->2 and 3->4 only (no 2->3 across the session break).
    out = h.adj[0, :, 4:]
    assert out[0, 1] == 1 and out[2, 3] == 1 and out[1, 2] == 0
    assert not h.mask[1].any() and h.items.shape[0] == 2


def test_global_graph_top_neighbours():
    sessions = [[1, 2, 3], [1, 2], [2, 1], [3, 1]]
    gg = build_global_graph(sessions, n_items=3, n_neighbors=2)
    # Pairs (both directions): 1-2 x3, 2-3 x1, 1-3 x1.
    np.testing.assert_array_equal(gg.neighbors[1], [2, 3])
    np.testing.assert_array_equal(gg.weights[1], [3, 1])
    np.testing.assert_array_equal(gg.neighbors[2], [1, 3])


def test_graph_modules_import_without_torch():
    code = "import sys, model.graphs, model.data, model.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_too_small_node_padding_is_an_error():
    with pytest.raises(ValueError):
        build_session_graphs([[1, 2, 3]], n_nodes=2)
