"""The onnxruntime Scorer: no torch at runtime, refusal of corrupted or incompatible artefacts, providers,
vocabulary and input handling."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export.artefact import CARD_FILE, ITEMS_FILE, MODEL_FILE, ArtefactError, sha256_file  # noqa: E402
from export.exporter import ExportOptions, build_artefact  # noqa: E402
from export.scorer import CPU, Scorer, resolve_providers, size_buckets, trim_graphs  # noqa: E402
from model.graphs import build_history_graphs, build_session_graphs  # noqa: E402
from model.network import ModelConfig, build_network  # noqa: E402

N_ITEMS = 200
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    """A verified artefact of a small seeded IGRec (history on), parity-checked on synthetic sessions."""
    root = tmp_path_factory.mktemp("scorer")
    config = ModelConfig(n_items=N_ITEMS, dim=16)
    torch.manual_seed(1)
    net = build_network(config)
    with torch.no_grad():
        net.item_encoder.table().mul_(4.0)
    torch.save({"model": net.state_dict(), "config": config.to_dict(), "train": {"max_len": 20}}, root / "best.pt")
    out, _ = build_artefact(ExportOptions(checkpoint=str(root / "best.pt"), out=str(root / "art"), parity_cases=300))
    return out


@pytest.fixture
def copy(artefact, tmp_path):
    """A private copy of the artefact to damage."""
    return Path(shutil.copytree(artefact, tmp_path / "art"))


def _edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / CARD_FILE).read_text())
    for dotted, value in changes.items():
        node = card
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    (folder / CARD_FILE).write_text(json.dumps(card))


def test_scorer_module_never_imports_torch(artefact):
    """The worker's import and scoring path, in a fresh interpreter: torch must not be loaded."""
    code = ("import sys; from export.scorer import Scorer; "
            f"s = Scorer({str(artefact)!r}, threads=1); items, scores = s.recommend_sessions([[1, 2, 3], [5]]); "
            "assert items.shape == (2, s.k), items.shape; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_loads_and_scores(artefact):
    scorer = Scorer(artefact, providers="cpu", threads=1)
    assert scorer.providers == [CPU] and scorer.k == 20 and scorer.n_items == N_ITEMS and scorer.has_history_inputs
    items, scores = scorer.recommend_sessions([[1, 2, 3, 2], [7]], [[[4, 5], [6]], []])
    assert items.shape == scores.shape == (2, 20) and items.dtype == np.int64 and scores.dtype == np.float32
    assert (np.diff(scores, axis=1) <= 0).all() and ((items >= 1) & (items <= N_ITEMS)).all()
    assert (scores < 0).all()
    assert scorer.card["graphs"]["max_len"] == 20


def test_flipped_byte_is_refused(copy):
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"model\.onnx: sha256 .* differs"):
        Scorer(copy)


def test_edited_vocabulary_is_refused(copy):
    with (copy / ITEMS_FILE).open("a") as f:
        f.write(f"{N_ITEMS + 1}\textra\n")
    with pytest.raises(ArtefactError, match=r"items\.tsv: sha256"):
        Scorer(copy)


@pytest.mark.parametrize("changes,message", [
    ({"format_version": 2}, "format_version 2"),
    ({"format": "something-else"}, "format 'something-else'"),
    ({"onnx__opset": 99}, "opset 99 is not supported"),
    ({"k": 10}, "metadata igrec.k='20' but the card says 10"),
    ({"n_items": N_ITEMS + 5}, "205"),
    ({"files": {MODEL_FILE: "0" * 64}}, "no checksum for items.tsv"),
], ids=["version", "format", "opset", "k", "n_items", "files"])
def test_incompatible_card_is_refused(copy, changes, message):
    _edit_card(copy, **changes)
    with pytest.raises(ArtefactError, match=message):
        Scorer(copy)


def test_model_swapped_under_a_resigned_card_is_refused(copy, tmp_path):
    """A different ONNX file with a recomputed checksum: the IO signature no longer matches the card."""
    import onnx

    model = onnx.load(str(copy / MODEL_FILE))
    model.graph.input[0].name = "clicks"
    for node in model.graph.node:
        node.input[:] = ["clicks" if i == "items" else i for i in node.input]
    onnx.save(model, str(copy / MODEL_FILE))
    _edit_card(copy, files={MODEL_FILE: sha256_file(copy / MODEL_FILE), ITEMS_FILE: sha256_file(copy / ITEMS_FILE)})
    with pytest.raises(ArtefactError, match=r"inputs .* differ from the card"):
        Scorer(copy)


def test_interest_table_of_the_wrong_shape_is_refused(copy):
    np.save(copy / "interests.npy", np.zeros((N_ITEMS, 3), np.float32))
    card = json.loads((copy / CARD_FILE).read_text())
    card["files"]["interests.npy"] = sha256_file(copy / "interests.npy")
    (copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ArtefactError, match=r"interests.npy: expected float32 \[201, k\]"):
        Scorer(copy, providers="cpu")


def test_session_interest_weights_are_the_mean_of_its_items(artefact):
    scorer = Scorer(artefact, providers="cpu")
    sessions = [np.array([3, 5]), np.array([7]), np.array([2, 2, 9, 4])]
    weights = scorer.interest_weights(sessions)
    assert weights.shape == (3, scorer.interests.shape[1]) and weights.dtype == np.float32
    for row, session in zip(weights, sessions, strict=True):
        np.testing.assert_allclose(row, scorer.interests[session].mean(0), atol=1e-6)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    assert scorer.interest_weights([]).shape == (0, scorer.interests.shape[1])
    with pytest.raises(ValueError, match="at least one item"):
        scorer.interest_weights([np.array([3]), np.array([], np.int64)])


def test_missing_card_or_folder(copy, tmp_path):
    with pytest.raises(ArtefactError, match="not a folder"):
        Scorer(tmp_path / "nowhere")
    (copy / CARD_FILE).unlink()
    with pytest.raises(ArtefactError, match=r"card\.json: missing"):
        Scorer(copy)


def test_provider_choice():
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers(["CPUExecutionProvider"]) == [CPU]
    with pytest.raises(ValueError, match="not in this onnxruntime build"):
        resolve_providers("NoSuchExecutionProvider")
    auto = resolve_providers("auto")
    assert auto[-1] == CPU
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        assert auto == [CPU]


def test_explicit_gpu_request_without_a_gpu_is_an_error(artefact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or any(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("needs a CUDA build of onnxruntime on a machine without a GPU")
    with pytest.raises(RuntimeError, match="requested CUDAExecutionProvider"):
        Scorer(artefact, providers="cuda")


def test_fp16_on_cpu_falls_back_to_float32(artefact, caplog):
    scorer = Scorer(artefact, providers="cpu", fp16=True)
    assert "fp16 requested" in caplog.text
    reference = Scorer(artefact, providers="cpu")
    np.testing.assert_array_equal(scorer.recommend_sessions([[3, 4]])[0], reference.recommend_sessions([[3, 4]])[0])


def test_vocabulary_round_trip(artefact):
    scorer = Scorer(artefact, providers="cpu")
    idx = scorer.index_of(["1", "17", str(N_ITEMS), "unknown", ""])
    assert idx.dtype == np.int64 and idx.tolist() == [1, 17, N_ITEMS, 0, 0]
    assert scorer.external_ids(np.array([[17, 1], [0, N_ITEMS]])).tolist() == [["17", "1"], ["", str(N_ITEMS)]]


def test_input_validation(artefact):
    scorer = Scorer(artefact, providers="cpu")
    with pytest.raises(ValueError, match=r"outside 0\.\.200"):
        scorer.recommend_sessions([[1, N_ITEMS + 1]])
    with pytest.raises(ValueError, match="history has 1 rows"):
        scorer.recommend(build_session_graphs([[1], [2]]), build_session_graphs([[3]]))
    items, scores = scorer.recommend_sessions([])
    assert items.shape == scores.shape == (0, 20)


def test_size_buckets_cover_every_row_once():
    rng = np.random.default_rng(3)
    sessions = [rng.integers(1, N_ITEMS + 1, n).tolist() for n in rng.choice([1, 2, 3, 6, 12, 30], 100)]
    groups = size_buckets(build_session_graphs(sessions))
    assert len(groups) > 2 and all(len(g) >= 8 for g in groups[:-1])
    np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(100))
    assert len(size_buckets(build_session_graphs(sessions[:10]))) == 1


def test_trim_keeps_clicks_after_history_separators():
    history = build_history_graphs([[[1, 2], [3, 4, 5]], [[6]]])
    trimmed = trim_graphs(history, np.array([1, 0]))
    np.testing.assert_array_equal(trimmed.mask, history.mask[[1, 0]])
    np.testing.assert_array_equal(trimmed.adj, history.adj[[1, 0]])


def test_buckets_give_the_unbucketed_results(artefact):
    """A mixed batch scored in size buckets equals the same batch scored padded as one."""
    rng = np.random.default_rng(4)
    sessions = [rng.integers(1, N_ITEMS + 1, n).tolist() for n in rng.choice([1, 2, 4, 9, 20], 64)]
    histories = [[rng.integers(1, N_ITEMS + 1, 5).tolist(), [1, 2]] if i % 3 else [] for i in range(64)]
    graphs, history = build_session_graphs(sessions), build_history_graphs(histories)
    assert len(size_buckets(graphs)) > 2
    items, scores = Scorer(artefact, providers="cpu", history=True).recommend(graphs, history)
    ref_items, ref_scores = Scorer(artefact, providers="cpu", bucket=False, history=True).recommend(graphs, history)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def _random_graphs(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return build_session_graphs([rng.integers(1, N_ITEMS + 1, rng.integers(1, 12)).tolist() for _ in range(n)])


def test_fp16_rewrite_is_a_valid_graph_close_to_float32(artefact):
    """The CUDA fp16 variant checked on the CPU provider, which also runs float16 MatMul: valid graph, same
    inputs/outputs, the same top-K set as float32 (its candidates are scored again in float32)."""
    import onnxruntime as ort

    from export.precision import fp16_model

    scorer = Scorer(artefact, providers="cpu", bucket=False)
    session = ort.InferenceSession(fp16_model(artefact / MODEL_FILE, N_ITEMS), providers=["CPUExecutionProvider"])
    graphs = _random_graphs(5, 40)
    items, scores = session.run(None, scorer._feeds(graphs, None))
    ref_items, ref_scores = scorer.recommend(graphs)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, ref_scores, atol=2e-2)
    assert (np.sort(items, 1) == np.sort(ref_items, 1)).all(1).mean() >= 0.95


def test_int8_scorer_returns_the_float32_top_k_set_and_close_scores(artefact):
    """int8 item product, exact re-scoring of its top candidates: the float32 top-K set, scores off only
    by the normaliser's tail."""
    graphs = _random_graphs(6, 300)
    int8 = Scorer(artefact, providers="cpu", int8=True)
    items, scores = int8.recommend(graphs)
    ref_items, ref_scores = Scorer(artefact, providers="cpu").recommend(graphs)
    assert int8.int8 and items.dtype == np.int64 and scores.dtype == np.float32
    assert (np.sort(items, 1) == np.sort(ref_items, 1)).all(1).mean() >= 0.99
    assert (items == ref_items).all(1).mean() >= 0.95
    np.testing.assert_allclose(scores, ref_scores, atol=2e-2)


def test_int8_answer_does_not_depend_on_the_batch(artefact):
    """Each row is quantised with its own scale, so a session's answer is the same alone or in any batch
    (the worker's answers must equal the offline scorer's, whatever the micro-batches were)."""
    graphs = _random_graphs(7, 24)
    scorer = Scorer(artefact, providers="cpu", int8=True, bucket=False)
    items, scores = scorer.recommend(graphs)
    for row in (0, 5, 23):
        alone = trim_graphs(graphs, np.array([row]))
        one_items, one_scores = scorer.recommend(alone)
        np.testing.assert_array_equal(one_items[0], items[row])
        np.testing.assert_allclose(one_scores[0], scores[row], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["int8_model", "fp16_model"])
def test_reduced_precision_raises_both_candidate_topks(artefact, variant):
    """Both TopKs of the blockwise candidate pick take RERANK_CANDIDATES, each capped at the width it reads:
    200 items make 4 blocks of 64, so 4 blocks and then 64 of their 256 columns."""
    import onnx
    import onnxruntime as ort

    from export import precision

    model = onnx.load_from_string(getattr(precision, variant)(artefact / MODEL_FILE, N_ITEMS))
    raised = [node.input[1] for node in model.graph.node
              if node.op_type == "TopK" and precision._PREFIX in node.input[1]]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(k, onnx.TensorProto.INT64, [1]) for k in raised)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = Scorer(artefact, providers="cpu", bucket=False)._feeds(_random_graphs(9, 3), None)
    ks = session.run(raised, feeds)
    assert sorted(int(k[0]) for k in ks) == [4, precision.RERANK_CANDIDATES]


@pytest.mark.parametrize("padded, message", [(True, "no exact re-scoring"), (False, "padded item product")])
def test_int8_refuses_a_graph_without_exact_rescoring(tmp_path, padded, message):
    """A graph whose TopK reads log-probabilities of the full product (an older export, or a network without
    IGRec.top_k) would rank with the int8 product alone, and one without the padded product of the blockwise
    top-k has no candidate TopKs to raise: both refused with the reason."""
    from onnx import TensorProto, helper, numpy_helper, save

    from export.precision import int8_model

    table = np.random.default_rng(8).standard_normal((4, N_ITEMS)).astype(np.float32)
    if padded:
        table = np.pad(np.vstack([table, np.zeros((1, N_ITEMS), np.float32)]), ((0, 0), (0, 8)))
        table[-1, N_ITEMS:] = -1e9
    nodes = [helper.make_node("MatMul", ["q1" if padded else "q", "table"], ["logits"]),
             helper.make_node("LogSoftmax", ["logits"], ["logp"]),
             helper.make_node("TopK", ["logp", "k"], ["scores", "items"])]
    if padded:
        nodes.insert(0, helper.make_node("Pad", ["q", "pads", "one"], ["q1"]))
    graph = helper.make_graph(
        nodes, "old", [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 5]),
         helper.make_tensor_value_info("items", TensorProto.INT64, ["B", 5])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([5], np.int64), "k"),
         numpy_helper.from_array(np.array([0, 0, 0, 1], np.int64), "pads"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    save(model, tmp_path / "old.onnx")
    with pytest.raises(ArtefactError, match=message):
        int8_model(tmp_path / "old.onnx", N_ITEMS)


def _prefixes(scorer: Scorer, seed: int, n: int):
    """Session prefixes over the artefact's external ids, with an unknown item and users' earlier sessions."""
    from streams.scoring import SessionPrefix

    rng = np.random.default_rng(seed)
    ids = scorer.external_ids(np.arange(1, N_ITEMS + 1)).tolist()
    prefixes = []
    for i in range(n):
        current = [ids[j] for j in rng.integers(0, N_ITEMS, rng.integers(1, 12))]
        current += ["never-seen"] if i % 5 == 0 else []
        prefixes.append(SessionPrefix(current, [[ids[j] for j in rng.integers(0, N_ITEMS, 4)]] if i % 2 else []))
    return prefixes


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_the_worker_scorer_process_answers_as_the_scorer_in_this_process(artefact, int8):
    """streams.scoring.ScorerProcess (the worker's scorer, in a child process) gives exactly what score_batch
    gives with a Scorer here, with the same precision: same top-K, scores, interests."""
    from streams.scoring import ScorerProcess, score_batch

    local = Scorer(artefact, providers="cpu", threads=1, spin=False, int8=int8)
    prefixes = _prefixes(local, seed=6, n=40)
    remote = ScorerProcess(artefact, providers="cpu", threads=1, int8=int8)
    try:
        assert remote.providers == [CPU]
        answers = remote(prefixes)
        assert answers == score_batch(local, prefixes)
        remote.submit(prefixes[:25])
        remote.submit(prefixes[25:])  # sent before the first answer is read: answered in order
        assert remote.collect() + remote.collect() == answers
        if int8:
            assert answers != score_batch(Scorer(artefact, providers="cpu", threads=1, spin=False), prefixes)
        assert remote([]) == []
    finally:
        remote.close()
    assert not remote.alive


def test_the_worker_scorer_process_refuses_a_corrupted_artefact_at_start(copy):
    from streams.scoring import ScorerProcess

    with (copy / MODEL_FILE).open("r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    with pytest.raises(ArtefactError, match="sha256"):
        ScorerProcess(copy, providers="cpu")


def test_a_dead_worker_scorer_process_is_an_error_not_a_hang(artefact):
    import os
    import signal

    from streams.scoring import ScorerProcess

    remote = ScorerProcess(artefact, providers="cpu", threads=1)
    os.kill(remote.pid, signal.SIGKILL)
    remote._process.wait(timeout=10)
    with pytest.raises(RuntimeError, match="scorer process ended"):
        remote(_prefixes(Scorer(artefact, providers="cpu"), seed=7, n=3))
    remote.close()


def test_the_worker_scorer_process_does_not_outlive_a_killed_worker(artefact):
    """kill -9 of the process that started the scorer: the scorer reads EOF and exits."""
    import os
    import signal
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom streams.scoring import ScorerProcess\n"
         f"s = ScorerProcess({str(artefact)!r}, providers='cpu')\nprint(s.pid, flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _running(child):
        assert time.monotonic() < deadline, "the scorer process outlived its worker"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 64, 65, 255, 256, 257])
def test_row_slices_are_the_fewest_near_equal_slices(rows):
    from export.scorer import row_slices

    slices = row_slices(rows, 32)
    sizes = [z - a for a, z in slices]
    assert slices[0][0] == 0 and slices[-1][1] == rows
    assert [a for a, _ in slices[1:]] == [z for _, z in slices[:-1]], "contiguous"
    assert len(slices) == -(-rows // 32) and max(sizes) <= 32 and max(sizes) - min(sizes) <= 1
