"""The multimodal item encoder: shapes, missing modalities, masks, the alignment loss, parameter groups,
knowledge reading, checkpoint round trip through the CLI, and export parity of a fused model."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model.multimodal import (  # noqa: E402
    EncoderConfig,
    MultimodalItemEncoder,
    build_item_encoder,
    freeze_item_encoder,
    info_nce,
    kg_slots,
)
from model.network import ItemEmbedding, ModelConfig, build_network  # noqa: E402
from model.train import parameter_groups  # noqa: E402

N, D = 40, 16


def _encoder(seed=0, **options) -> MultimodalItemEncoder:
    """Text (F=12) on even items, image (F=7) on items 1..20, knowledge (2 relations) on items 1..30; items
    31..40 without image/knowledge, odd ones of them with nothing at all."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = EncoderConfig(n_items=N, dim=D, dense={"text": 12, "image": 7}, n_entities=9, n_relations=2,
                           kg_max=3, gate_bias=0.0, **options)
    enc = MultimodalItemEncoder(config)
    text_present = np.zeros(N + 1, bool)
    text_present[2::2] = True
    image_present = np.zeros(N + 1, bool)
    image_present[1:21] = True
    enc.set_dense("text", rng.normal(size=(N + 1, 12)).astype(np.float32) * text_present[:, None], text_present)
    enc.set_dense("image", rng.normal(size=(N + 1, 7)).astype(np.float32) * image_present[:, None], image_present)
    rel = np.zeros((N + 1, 3), np.int64)
    ent = np.zeros((N + 1, 3), np.int64)
    rel[1:31, :2] = [1, 2]
    ent[1:31, 0] = rng.integers(1, 5, 30)
    ent[1:31, 1] = rng.integers(5, 10, 30)
    enc.set_knowledge(rel, ent)
    return enc


def test_shapes_padding_row_and_table_equals_lookup():
    enc = _encoder().eval()
    ids = torch.tensor([[0, 1, 2], [33, 40, 7]])
    with torch.no_grad():
        out, table = enc(ids), enc.table()
    assert out.shape == (2, 3, D) and table.shape == (N + 1, D)
    assert not table[0].any() and not out[0, 0].any()
    torch.testing.assert_close(out, table[ids])
    assert torch.isfinite(table).all()


def test_item_without_modalities_is_its_id_embedding_and_others_are_fused():
    enc = _encoder().eval()
    with torch.no_grad():
        table = enc.table()
        ids = enc.id.weight.weight
    torch.testing.assert_close(table[[31, 33, 39]], ids[[31, 33, 39]])  # no text, image or knowledge
    assert not torch.allclose(table[1:31], ids[1:31], atol=1e-4)  # knowledge (and image) fused in


def test_item_without_modalities_still_trains_with_finite_gradients():
    enc = _encoder().train()
    loss = enc(torch.tensor([31, 33, 5])).pow(2).sum()
    loss.backward()
    assert torch.isfinite(enc.id.weight.weight.grad).all()
    assert enc.id.weight.weight.grad[31].abs().sum() > 0 and enc.entity.weight.grad.abs().sum() > 0


def test_masked_out_features_change_nothing():
    enc = _encoder().eval()
    with torch.no_grad():
        before = enc.table().clone()
        enc.features_image[25:].normal_()  # image absent from item 21 on
        enc.features_text[1::2].normal_()  # text absent on odd items
        enc.kg_relations[1:31, 2] = 1  # relation without an entity: no pair
        enc._cache = None
        after = enc.table()
        torch.testing.assert_close(after, before)
        enc.features_image[3].normal_()  # present: must change item 3 only
        enc._cache = None
        changed = (enc.table() - before).abs().sum(1) > 0
    assert changed.nonzero().flatten().tolist() == [3]


def test_token_dropout_only_in_training():
    enc = _encoder(token_dropout=0.5)
    with torch.no_grad():
        a, b = enc.eval().table().clone(), enc.eval().table()
        torch.testing.assert_close(a, b)
        assert not torch.allclose(enc.train().table(), a)


def test_alignment_loss_is_minimal_for_aligned_views_and_larger_for_shifted_ones():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=gen)
    aligned = info_nce(x, x.clone(), 0.2)
    shifted = info_nce(x, x + 5.0 * torch.randn(1, 32, generator=gen), 0.2)
    shuffled = info_nce(x, x[torch.randperm(64, generator=gen)], 0.2)
    assert aligned < 1.0 < shifted and aligned < shuffled
    assert shifted > max(3 * aligned, 0.5 * np.log(64))  # views collapsed towards the shift: near chance


def test_encoder_alignment_loss_weight_and_gradients():
    enc = _encoder(align_weight=0.5).train()
    ids = torch.arange(0, N + 1)
    loss = enc.alignment_loss(ids)
    assert loss > 0
    loss.backward()
    assert enc.id.weight.weight.grad.abs().sum() > 0 and enc.entity.weight.grad.abs().sum() > 0
    assert enc.dense["image"][0].weight.grad.abs().sum() > 0
    assert _encoder(align_weight=0.0).alignment_loss(ids) == 0


def test_parameter_groups_have_their_own_learning_rates_and_cover_every_parameter_once():
    net = build_network(ModelConfig(n_items=N, dim=D, interests=2), _encoder())
    groups = parameter_groups(net, 1e-3, 2e-3, 0.0, {"knowledge": 5e-2, "fusion": 0.0})
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"id": 2e-3, "text": 2e-3, "image": 2e-3, "knowledge": 5e-2, "fusion": 0.0, "network": 1e-3}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    only_knowledge = parameter_groups(net, 0.0, 0.0, 0.0, {"knowledge": 1e-2})
    opt = torch.optim.AdamW(only_knowledge)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net.item_encoder.table().pow(2).sum().backward()
    opt.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"item_encoder.entity.weight", "item_encoder.relation.weight"}


def test_kg_slots_renumber_deduplicates_caps_and_drops_unknown_items(tmp_path):
    path = tmp_path / "kg.txt"
    path.write_text("3 0 100\n3 1 250\n3 0 100\n1 2 250\n3 2 300\n3 1 400\n9 0 100\n")
    rel, ent, n_ent, n_rel = kg_slots(path, n_items=5, kg_max=3)
    assert rel.shape == ent.shape == (6, 3) and (n_ent, n_rel) == (4, 3)
    assert ent[3].tolist() == [1, 2, 3] and rel[3].tolist() == [1, 2, 3]  # 4th pair of item 3 capped
    assert ent[1].tolist() == [2, 0, 0] and rel[1].tolist() == [3, 0, 0]  # entity 250 shared with item 3
    assert not ent[[0, 2, 4, 5]].any()


def _toy_split(folder, n_items=N, seed=0):
    """Sessions where item i is followed by i + 1 (mod n), every item 1..n in the test targets."""
    rng = np.random.default_rng(seed)
    sessions = [[(s + k) % n_items + 1 for k in range(rng.integers(2, 6))] for s in rng.integers(0, n_items, 300)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_sessions.txt").write_text("\n".join(" ".join(map(str, s)) for s in sessions) + "\n")
    (folder / "test.tsv").write_text("".join(f"{i} {(i + 3) % n_items + 1}\t{(i + 4) % n_items + 1}\n"
                                             for i in range(1, n_items + 1)))
    (folder / "kg.txt").write_text("".join(f"{i} {r} {n_items + 1 + (i + r) % 7}\n"
                                           for i in range(1, n_items - 5) for r in range(2)))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch multimodal run through ``igrec train --kg --item-features``, its folder and data."""
    from model.cli import main

    root = tmp_path_factory.mktemp("mm")
    data = _toy_split(root / "split")
    rng = np.random.default_rng(1)
    present = np.arange(N + 1) % 3 == 1
    np.savez(root / "text.npz", features=rng.normal(size=(N + 1, 10)).astype(np.float32), present=present)
    out = root / "run"
    main(["train", "--data", str(data), "--out", str(out), "--batch-size", "32", "--lr", "1e-2", "--epochs", "1",
          "--set", "dim=16", "--no-test-each-epoch", "--threads", "1", "--kg", str(data / "kg.txt"),
          "--item-features", f"text={root / 'text.npz'}", "--fusion", "align_weight=0.2",
          "--lr-group", "knowledge=2e-2"])
    return out, data


def test_checkpoint_round_trip_rebuilds_the_fused_network(trained, capsys):
    from model.evaluate import load_checkpoint
    from model.multimodal import MultimodalItemEncoder as Encoder

    out, data = trained
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["item_encoder"]["config"]["n_entities"] == 7 and state["item_encoder"]["config"]["dense"] == {
        "text": 10}
    assert state["train"]["lr_groups"] == {"knowledge": 2e-2}
    net, _ = load_checkpoint(out / "best.pt")
    assert isinstance(net.item_encoder, Encoder) and net.item_encoder.kg_entities[1].tolist()[:2] == [2, 3]
    from model.cli import main

    main(["evaluate", "--data", str(data), "--checkpoint", str(out / "best.pt"), "--out", str(out / "eval.json")])
    evaluated = json.loads((out / "eval.json").read_text())["metrics"]
    results = json.loads((out / "results.json").read_text())["test"]
    assert evaluated == pytest.approx(results)


def test_export_of_a_multimodal_checkpoint_has_parity(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from export.exporter import ExportOptions, build_artefact, load_network
    from export.scorer import Scorer
    from model.evaluate import load_checkpoint

    out, data = trained
    fused, _ = load_checkpoint(out / "best.pt")
    frozen, _ = load_network(out / "best.pt")
    assert isinstance(frozen.item_encoder, ItemEmbedding)
    from model.graphs import build_session_graphs

    x = tuple(torch.from_numpy(a) for a in build_session_graphs([[1, 2, 3], [40, 7], [35]]).arrays())
    with torch.no_grad():
        torch.testing.assert_close(frozen(*x), fused(*x))
    art, report = build_artefact(ExportOptions(checkpoint=str(out / "best.pt"), out=str(tmp_path / "art"),
                                               data=str(data), parity_cases=200, k=10))
    assert report.passed and report.identical == 1.0, report.summary()
    items, _ = Scorer(art, providers="cpu").recommend_sessions([[1, 2, 3]])
    with torch.no_grad():
        expected = torch.topk(fused(*tuple(torch.from_numpy(a) for a in build_session_graphs([[1, 2, 3]]).arrays())),
                              10).indices.numpy()
    np.testing.assert_array_equal(items, expected)


def test_freeze_keeps_an_id_only_network_unchanged():
    net = build_network(ModelConfig(n_items=N, dim=D))
    encoder = net.item_encoder
    assert freeze_item_encoder(net).item_encoder is encoder


def test_build_item_encoder_from_files(tmp_path):
    data = _toy_split(tmp_path / "split")
    np.save(tmp_path / "img.npy", np.eye(N + 1, 5, dtype=np.float32))
    enc = build_item_encoder(N, D, kg=str(data / "kg.txt"), features={"image": str(tmp_path / "img.npy")},
                             heads=4)
    assert enc.config.dense == {"image": 5} and enc.config.n_relations == 2 and enc.config.heads == 4
    assert enc.present_image.nonzero().flatten().tolist() == [1, 2, 3, 4]  # non-zero rows of eye, row 0 never
    assert set(enc.config.sources) == {"image", "knowledge"} and len(enc.config.sources["knowledge"]["sha256"]) == 64
    assert set(enc.parameter_groups()) == {"id", "image", "knowledge", "fusion"}
