"""The torch networks: output contract, training loss == forward, interests, history gate, ONNX export,
and a tiny end-to-end train/evaluate/resume through the CLI."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model.graphs import build_global_graph, build_history_graphs, build_session_graphs  # noqa: E402
from model.network import (  # noqa: E402
    NEG,
    GatedGraphCell,
    ModelConfig,
    Readout,
    block_top_k,
    build_network,
    frozen_items,
    padded_product,
    padded_table,
    row_normalize,
    target_log_likelihood,
)

SESSIONS = [[1, 2, 3, 2], [5, 6], [7, 7, 7, 8, 9]]
TARGETS = torch.tensor([2, 10, 7])
CONFIGS = {
    "igrec": ModelConfig(n_items=30, dim=16, interests=3, use_prior=False),
    "srgnn": ModelConfig.srgnn(30, dim=16),
    "gru4rec": ModelConfig(n_items=30, dim=16, arch="gru4rec"),
    "igrec+prior": ModelConfig(n_items=30, dim=16, interests=2, use_prior=True, prior_neighbors=4),
}
PRIOR_SESSIONS = [[1, 2, 3, 4], [2, 10, 11], [7, 8, 9, 7], [5, 6, 12], [3, 2, 10]]


def _network(config: ModelConfig):
    """build_network, with the co-occurrence prior loaded from PRIOR_SESSIONS when the config uses it."""
    net = build_network(config)
    if config.arch == "igrec" and config.use_prior:
        graph = build_global_graph(PRIOR_SESSIONS, config.n_items, config.prior_neighbors, config.prior_hops)
        net.set_prior_graph(graph.neighbors, graph.weights)
    return net


def _inputs(sessions=SESSIONS):
    return tuple(torch.from_numpy(a) for a in build_session_graphs(sessions).arrays())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_is_a_distribution_over_items_and_matches_the_training_loss(name):
    torch.manual_seed(0)
    net = _network(CONFIGS[name]).eval()
    x = _inputs()
    with torch.no_grad():
        logp = net(*x)
        ll = net.log_likelihood(TARGETS, *x)
    assert logp.shape == (3, 31)
    assert (logp[:, 0] < -1e8).all()
    np.testing.assert_allclose(logp[:, 1:].exp().sum(1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ll.numpy(), logp.gather(1, TARGETS[:, None]).squeeze(1).numpy(), rtol=1e-5)


def test_target_log_likelihood_values_and_gradient():
    """The fused loss head equals log_softmax(query @ items.T + scattered prior)[target], and its
    hand-written backward passes gradcheck for the query, the item table and the prior bias."""
    query = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    items = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 2, 3, 7])
    ids = torch.tensor([[1, 3, 3, 0], [2, 5, 0, 0], [7, 1, 6, 2], [0, 0, 0, 0]])
    bias = (torch.rand(4, 4, dtype=torch.float64) * (ids > 0)).requires_grad_()
    logits = (query @ items.t()).scatter_add(1, (ids - 1).clamp(min=0), bias)
    expected = torch.log_softmax(logits, -1).gather(1, (target - 1)[:, None]).squeeze(1)
    torch.testing.assert_close(target_log_likelihood(query, items, target, (ids, bias)), expected)
    assert torch.autograd.gradcheck(lambda q, v, b: target_log_likelihood(q, v, target, (ids, b)),
                                    (query, items, bias))
    assert torch.autograd.gradcheck(lambda q, v: target_log_likelihood(q, v, target), (query, items))


def test_row_normalize_matches_f_normalize_values_and_gradient():
    x = torch.randn(30, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(row_normalize, (x,))
    weights = torch.randn(30, 7, dtype=torch.float64)
    (row_normalize(x) * weights).sum().backward()
    fused = x.grad.clone()
    x.grad = None
    (torch.nn.functional.normalize(x, dim=-1) * weights).sum().backward()
    assert torch.allclose(fused, x.grad, atol=1e-12)
    assert torch.allclose(row_normalize(x), torch.nn.functional.normalize(x, dim=-1), atol=1e-15)


def _ggnn_step(cell, adj, hidden):
    """SR-GNN eq. 1-5 as written: edge projections, messages, input gates on their concatenation, GRU."""
    n = hidden.shape[1]
    msg_in = adj[:, :, :n] @ cell.edge_in(hidden) + cell.bias_in
    msg_out = adj[:, :, n:] @ cell.edge_out(hidden) + cell.bias_out
    i_r, i_z, i_n = cell.input_gates(torch.cat([msg_in, msg_out], -1)).chunk(3, -1)
    h_r, h_z, h_n = cell.hidden_gates(hidden).chunk(3, -1)
    reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    return (1 - update) * candidate + update * hidden


def test_folded_ggnn_step_equals_the_step_as_written_on_every_interest_graph():
    """The cell's folded form (weights multiplied out, the k interest graphs sharing one projection) is the
    same function as SR-GNN's step, for one graph, for k row-scaled copies, and for a second step."""
    torch.manual_seed(0)
    cell = GatedGraphCell(6).double()
    for p in cell.parameters():
        torch.nn.init.normal_(p)
    m, n, k = 4, 5, 3
    adj = torch.rand(m, n, 2 * n, dtype=torch.float64) * (torch.rand(m, n, 2 * n) < 0.5)
    adj = adj / adj.sum(-1, keepdim=True).clamp(min=1e-9)
    hidden = torch.randn(m, n, 6, dtype=torch.float64)
    scale = torch.rand(m, k, n, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(cell(adj, hidden), _ggnn_step(cell, adj, hidden))
        folded = cell(adj, hidden, scale)
        assert folded.shape == (m, k, n, 6)
        for j in range(k):
            torch.testing.assert_close(folded[:, j], _ggnn_step(cell, adj, scale[:, j, :, None] * hidden))
        again = cell(adj[:, None], folded)
        torch.testing.assert_close(again[:, 1], _ggnn_step(cell, adj, folded[:, 1]))


def test_readout_with_positions_equals_the_readout_as_written():
    """The readout splits ``mix`` into a per-click and a per-position part; the result is GCE-GNN's
    position-aware attention readout as written."""
    torch.manual_seed(0)
    readout = Readout(6, max_len=7, use_positions=True).double()
    seq = torch.randn(3, 4, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    rev_pos = torch.tensor([[3, 2, 1, 0], [1, 0, 0, 0], [6, 6, 5, 4]])
    last = seq[torch.arange(3), torch.tensor([3, 1, 3])]
    keys = torch.tanh(readout.mix(torch.cat([seq, readout.positions(rev_pos)], -1)))
    alpha = readout.q(torch.sigmoid(readout.w_last(last)[:, None, :] + readout.w_seq(keys)))
    expected = readout.out(torch.cat([last, (alpha * seq * mask[..., None]).sum(1)], -1))
    with torch.no_grad():
        torch.testing.assert_close(readout(seq, mask, last, rev_pos), expected)
        shared = readout(torch.stack([seq, 2 * seq], 1), mask[:, None], torch.stack([last, 2 * last], 1),
                         rev_pos[:, None])
        torch.testing.assert_close(shared[:, 0], expected)


def test_gumbel_noise_only_in_training():
    torch.manual_seed(0)
    net = build_network(ModelConfig(n_items=30, dim=16, interests=4, dropout=0.0, use_repeat=False))
    x = _inputs()
    net.eval()
    with torch.no_grad():
        a, b = net(*x), net(*x)
    torch.testing.assert_close(a, b)
    net.train()
    with torch.no_grad():
        c = net(*x)
    assert not torch.allclose(a, c)


def test_repeat_branch_raises_probability_of_session_items():
    torch.manual_seed(0)
    net = build_network(ModelConfig(n_items=30, dim=16, use_global=False)).eval()
    with torch.no_grad():
        net.repeat.gate.bias.fill_(10.0)  # p(repeat) ~ 1: almost all mass on the session's items
        logp = net(*_inputs([[4, 5, 6]]))
    assert logp[0, [4, 5, 6]].exp().sum() > 0.99


def test_empty_history_is_a_no_op_and_real_history_changes_the_scores():
    torch.manual_seed(0)
    net = build_network(ModelConfig(n_items=30, dim=16, use_global=False, dropout=0.0)).eval()
    x = _inputs()
    empty = build_history_graphs([[], [], []])
    some = build_history_graphs([[[11, 12]], [], [[13, 14, 15]]])
    with torch.no_grad():
        base = net(*x)
        with_empty = net(*x, torch.from_numpy(empty.items), torch.from_numpy(empty.adj))
        with_some = net(*x, torch.from_numpy(some.items), torch.from_numpy(some.adj))
    torch.testing.assert_close(base, with_empty)
    torch.testing.assert_close(base[1], with_some[1])
    assert not torch.allclose(base[0], with_some[0])


@pytest.mark.parametrize("name", ["igrec", "igrec+prior", "srgnn"])
def test_top_k_equals_topk_of_the_full_log_probabilities(name):
    torch.manual_seed(0)
    net = _network(CONFIGS[name]).eval()
    with torch.no_grad():
        net.item_encoder.table().mul_(4.0)  # peaked scores: no near-ties to swap
        x = _inputs()
        expected_scores, expected_items = torch.topk(net(*x), 8, dim=-1)
        items, scores = net.top_k(8, *x)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(items, expected_items)


@pytest.mark.parametrize("width, k, clustered", [(64, 20, False), (640, 20, False), (640, 20, True),
                                                (43136, 20, False), (640, 64, True), (128, 100, False)])
def test_block_top_k_picks_the_columns_of_torch_topk(width, k, clustered):
    """Exact, in order: also when the top k share one block, and when the row has fewer blocks than k."""
    logits = torch.randn(16, width, generator=torch.Generator().manual_seed(width + k))
    logits[:, -5:] = NEG
    if clustered:
        logits[:, 70:70 + k] += 10.0
    assert torch.equal(block_top_k(logits, k), torch.topk(logits, k).indices)


def test_padded_product_equals_the_product_and_pads_with_neg():
    generator = torch.Generator().manual_seed(3)
    query, table = torch.randn(5, 16, generator=generator), torch.randn(100, 16, generator=generator)
    logits = padded_product(query, padded_table(table), training=False)
    assert logits.shape == (5, 128)
    torch.testing.assert_close(logits[:, :100], query @ table.t(), rtol=1e-6, atol=1e-6)
    assert (logits[:, 100:] == NEG).all()


def test_cooccurrence_prior_raises_items_seen_next_to_the_session_items():
    torch.manual_seed(0)
    config = ModelConfig(n_items=30, dim=16, interests=1, use_prior=True, prior_neighbors=4, dropout=0.0)
    net = _network(config).eval()
    x = _inputs()
    with torch.no_grad():
        with_prior = net(*x)
        net.prior_shares.zero_()
        without = net(*x)
    gain = (with_prior - without)[1]
    # session [5, 6]: 12 co-occurs with 6 (one click apart) and with 5 (two apart); 1 never does
    assert gain[12] > gain[1] + 0.1
    torch.testing.assert_close(gain[1], gain[20])


def test_training_reads_the_prior_graph_without_the_cases_own_session():
    torch.manual_seed(0)
    config = ModelConfig(n_items=30, dim=16, interests=1, use_prior=True, prior_neighbors=4, dropout=0.0)
    net = _network(config).eval()
    full = build_global_graph(PRIOR_SESSIONS, 30, 4, config.prior_hops)
    empty = build_global_graph([], 30, 4, config.prior_hops)
    net.set_training_prior_graphs([(empty.neighbors, empty.weights), (full.neighbors, full.weights)])
    x = _inputs()
    with torch.no_grad():
        read_full = net.log_likelihood(TARGETS, *x)
        read_empty = net.log_likelihood(TARGETS, *x, prior_graph=torch.tensor([0, 0, 0]))
        read_fold_full = net.log_likelihood(TARGETS, *x, prior_graph=torch.tensor([1, 1, 1]))
        net.prior_shares.zero_()
        no_prior = net.log_likelihood(TARGETS, *x)
    torch.testing.assert_close(read_fold_full, read_full)
    torch.testing.assert_close(read_empty, no_prior)
    assert not torch.allclose(read_full, no_prior)
    assert "prior_fold_neighbors" not in net.state_dict()


@pytest.mark.parametrize("prior", [False, True])
def test_onnx_export_opset18_matches_torch(tmp_path, prior):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = _network(ModelConfig(n_items=30, dim=16, use_prior=prior, prior_neighbors=4)).eval()
    names = ["items", "alias", "adj", "mask", "hist_items", "hist_adj"]
    g, h = build_session_graphs(SESSIONS), build_history_graphs([[[4, 5]], [], [[1, 2]]])
    example = tuple(torch.from_numpy(a) for a in (*g.arrays(), h.items, h.adj))
    axes = {"items": {0: "b", 1: "n"}, "alias": {0: "b", 1: "l"}, "adj": {0: "b", 1: "n", 2: "n2"},
            "mask": {0: "b", 1: "l"}, "hist_items": {0: "b", 1: "h"}, "hist_adj": {0: "b", 1: "h", 2: "h2"}}
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, example, str(path), opset_version=18, dynamo=False, input_names=names,
                      output_names=["logp"], dynamic_axes=axes)
    # Different batch, graph and history sizes than the example.
    g2, h2 = build_session_graphs([[1, 2, 3, 4, 5, 6, 1], [9]]), build_history_graphs([[], [[3, 4, 5]]])
    feeds = dict(zip(names, (*g2.arrays(), h2.items, h2.adj), strict=True))
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        ref = net(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(out[:, 1:], ref[:, 1:], atol=1e-4)


def _toy_split(folder) -> None:
    """Learnable toy data: item i is followed by i + 1 (mod 20)."""
    rng = np.random.default_rng(0)
    sessions = [[(s + k) % 20 + 1 for k in range(rng.integers(2, 6))] for s in rng.integers(0, 20, 300)]
    (folder / "train_sessions.txt").write_text("\n".join(" ".join(map(str, s)) for s in sessions) + "\n")
    (folder / "test.tsv").write_text("".join(f"{i}\t{i % 20 + 1}\n" for i in range(1, 21)))


def test_cli_train_evaluate_resume(tmp_path, capsys):
    from model.cli import main

    _toy_split(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path), "--out", str(out), "--batch-size", "32", "--lr", "1e-2",
            "--set", "dim=16", "--no-test-each-epoch", "--patience", "5"]
    main([*args, "--epochs", "2"])
    res = json.loads((out / "results.json").read_text())
    assert res["test"]["HR@10"] > 80.0  # a random ranking of 20 items gives 50
    assert (out / "curves.png").stat().st_size > 0
    main([*args, "--epochs", "3", "--resume"])
    res2 = json.loads((out / "results.json").read_text())
    assert [h["epoch"] for h in res2["history"]] == [1, 2, 3]
    main(["evaluate", "--data", str(tmp_path), "--checkpoint", str(out / "best.pt")])
    main(["evaluate", "--data", str(tmp_path), "--baseline", "pop"])
    assert "HR@20" in capsys.readouterr().out


def test_cli_train_without_validation_runs_every_epoch_and_tests_the_last(tmp_path, capsys):
    """--val-fraction 0 is a refit on all training sessions: no validation (the test split is never
    used to choose an epoch), all epochs run, the last one is tested."""
    from model.cli import main

    _toy_split(tmp_path)
    out = tmp_path / "refit"
    main(["train", "--data", str(tmp_path), "--out", str(out), "--batch-size", "32", "--lr", "1e-2",
          "--set", "dim=16", "--no-test-each-epoch", "--patience", "1", "--epochs", "3", "--val-fraction", "0"])
    res = json.loads((out / "results.json").read_text())
    assert [h["val"] for h in res["history"]] == [None, None, None]
    assert res["best_epoch"] == 3
    assert res["test"]["HR@10"] > 80.0
    assert "no validation slice" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="val-fraction"):
        main(["search", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--val-fraction", "0"])


def test_cli_train_with_weight_average_saves_the_averaged_weights(tmp_path, capsys):
    """--ema: validation, best.pt and the test use the averaged weights, checkpoint.pt keeps the trained ones
    and the average; the trained weights' validation metrics are recorded beside the averaged ones."""
    from model.cli import main

    _toy_split(tmp_path)
    out = tmp_path / "ema"
    args = ["train", "--data", str(tmp_path), "--out", str(out), "--batch-size", "32", "--lr", "1e-2",
            "--set", "dim=16", "--no-test-each-epoch", "--patience", "5", "--ema", "0.9"]
    main([*args, "--epochs", "1"])
    last = torch.load(out / "checkpoint.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    net = build_network(ModelConfig.from_dict(best["config"]))
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    average = dict(zip(names, last["ema"]["shadow"], strict=True))
    assert all(torch.equal(best["model"][n], average[n]) for n in names)
    assert not all(torch.equal(last["model"][n], average[n]) for n in names)

    main([*args, "--epochs", "2", "--resume"])
    res = json.loads((out / "results.json").read_text())
    assert [set(h) >= {"val", "val_trained"} for h in res["history"]] == [True, True]
    assert res["test"]["HR@10"] > 70.0  # random: 50; the average lags the weights on this short run
    assert "averaged; trained weights" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=True)["ema"]["updates"] > last["ema"]["updates"]


def test_frozen_items_builds_the_item_table_once_and_scores_alike():
    """Within ``frozen_items`` inference calls share one item table (normalised, padded); outside it, in
    training mode or where autograd records, every call builds its own; the results are the same."""
    torch.manual_seed(0)
    net = _network(CONFIGS["igrec"]).eval()
    x = _inputs()
    built = []
    fresh = net.item_encoder.table
    net.item_encoder.table = lambda: built.append(1) or fresh()
    with torch.inference_mode():
        logp, top = net(*x), net.top_k(5, *x)
    assert len(built) == 2
    built.clear()
    with frozen_items(net), torch.inference_mode():
        frozen_logp, frozen_top = net(*x), net.top_k(5, *x)
        net(*x)
        net.top_k(5, *x)
    assert len(built) == 1, "one table for every call within"
    torch.testing.assert_close(frozen_logp, logp, rtol=0, atol=0)
    for a, b in zip(frozen_top, top, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    built.clear()
    with frozen_items(net):
        net(*x).sum().backward()
        net(*x)
    assert len(built) == 2, "autograd recording: built per call"
    assert net._items_frozen is None


def test_frozen_items_ends_with_its_block_so_new_weights_count_after_it():
    torch.manual_seed(0)
    net = _network(CONFIGS["igrec"]).eval()
    x = _inputs()
    with frozen_items(net), torch.inference_mode():
        before = net(*x)
    with torch.no_grad():
        net.item_encoder.weight.weight.mul_(2.0)
    with frozen_items(net), torch.inference_mode():
        after = net(*x)
    assert not torch.allclose(before, after)


def test_a_trace_within_frozen_items_keeps_the_padding_of_the_head():
    """The exporter's graph must pad the table itself (``export.precision`` finds the product by its Pad)."""
    torch.manual_seed(0)
    net = _network(CONFIGS["igrec"]).eval()
    x = _inputs()

    class TopFive(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *inputs):
            return self.net.top_k(5, *inputs)

    with frozen_items(net), torch.no_grad():
        net.top_k(5, *x)
        traced = torch.jit.trace(TopFive(), x, check_trace=False)
    kinds = [node.kind() for node in traced.inlined_graph.nodes()]
    assert sum(kind in ("aten::pad", "aten::constant_pad_nd") for kind in kinds) >= 2, "query and table padded"
