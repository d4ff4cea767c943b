"""Item features and item knowledge: TF-IDF by hand, tokenisation, photo colours, entity fusion, facts, CNN."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from model.fashion import DEFAULT_FOLDER, IMAGES_TAR, load_items, padded_matrix
from model.image_features import PALETTE, image_attributes, read_images
from model.knowledge import (
    BrandModel,
    Observation,
    colour_vocabulary,
    fashion_facts,
    kg_facts,
    normalise,
    resolve,
    title_colour,
    title_gender,
)
from model.text_features import TfIdf, is_chinese, tokenize
from streams.triples import from_fact

needs_data = pytest.mark.skipif(not (DEFAULT_FOLDER / IMAGES_TAR).exists(), reason="shared fashion data missing")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread (the machine's cores are shared), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tfidf_matches_hand_computed_values() -> None:
    # tokens: [red, shirt] / [blue, shirt] / [red, red, cap]; beta = 3, beta_red = beta_shirt = 2, others 1
    tfidf = TfIdf.fit(["The red shirt", "a blue shirt", "Red red cap of the"])
    assert tfidf.tokens == [["red", "shirt"], ["blue", "shirt"], ["red", "red", "cap"]]
    idf_common, idf_rare = 1.1760912590556813, 1.4771212547196624  # lg(3/2) + 1, lg(3/1) + 1
    assert tfidf.idf == pytest.approx({"red": idf_common, "shirt": idf_common, "blue": idf_rare, "cap": idf_rare})
    assert tfidf.scores(2) == pytest.approx({"red": 2 / 3 * idf_common, "cap": 1 / 3 * idf_rare})
    assert tfidf.keywords(2, top=1) == [("red", pytest.approx(0.7840608393704542))]
    assert tfidf.keywords(1, top=5) == [("blue", pytest.approx(0.7385606273598312)),
                                        ("shirt", pytest.approx(0.5880456295278407))]
    assert [w for w, _ in tfidf.keywords(0, top=2)] == ["red", "shirt"]  # equal F: alphabetical


def test_idf_plus_one_is_outside_the_logarithm() -> None:
    tfidf = TfIdf.fit(["cap red", "cap blue", "cap green", "cap black"])
    assert tfidf.idf["cap"] == 1.0  # in every item: lg(4/4) + 1, not lg(4/5) < 0
    assert tfidf.idf["red"] == pytest.approx(math.log10(4) + 1)


def test_stop_words_numbers_and_single_letters_are_removed() -> None:
    assert tokenize("Pack of 2 the Men's Socks - M") == ["men's", "socks"]
    assert tokenize("ADIDAS Duramo 3 M White Sports-Shoes") == ["adidas", "duramo", "white", "sports", "shoes"]


def test_chinese_text_is_segmented_with_jieba() -> None:
    text = "耐克男子跑步鞋的黑色款"
    assert is_chinese(text) and not is_chinese("Nike Men Shoe")
    words = tokenize(text)
    assert "跑步" in words and "黑色" in words
    assert "的" not in words and "款" not in words  # Chinese stop list
    tfidf = TfIdf.fit([text, "阿迪达斯女子跑步鞋"])
    assert tfidf.idf["跑步"] == 1.0 and tfidf.idf["黑色"] == pytest.approx(math.log10(2) + 1)


def _solid(rgb: tuple[int, int, int], height: int = 80, width: int = 60) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (height, width, 3)).copy()


def test_colour_distribution_of_generated_photos() -> None:
    red = image_attributes(_solid((220, 20, 30)))
    assert red.colours["red"] == 1.0 and red.dominant == ("red",) and red.white_background == 0.0
    assert (red.width, red.height, red.resolution, red.aspect) == (60, 80, 4800, 0.75)
    assert sum(red.colours.values()) == pytest.approx(1.0) and list(red.colours) == list(PALETTE)
    half = _solid((255, 255, 255))
    half[:40] = (20, 30, 100)  # navy top half on a white background
    navy = image_attributes(half)
    assert navy.white_background == 0.5 and navy.colours["navy"] == 1.0
    white = image_attributes(_solid((250, 250, 250)))  # no foreground: the distribution covers every pixel
    assert white.white_background == 1.0 and white.dominant == ("white",)
    vector = navy.vector()
    assert vector.dtype == np.float32 and vector.shape == (5 + len(PALETTE),)
    assert vector[4] == 0.5 and vector[5 + PALETTE.index("navy")] == 1.0


def test_entities_are_normalised_with_the_synonym_map() -> None:
    assert normalise("  Navy   Blue ") == "navy" == normalise("NAVY")
    assert normalise("Gray") == "grey" and normalise("Men's") == "men" and normalise("Ｗomen") == "women"
    assert normalise("  Lotus  Herbals. ") == "lotus herbals"
    vocabulary = colour_vocabulary(["Blue", "Navy Blue", "Off White", "White"])
    assert title_colour("Turtle Check Men Navy Blue Shirt", vocabulary) == "navy blue"
    assert title_colour("Bluestone ring", vocabulary) == ""
    assert title_colour("Wildcraft Unisex White & Navy Blue Rucksack", vocabulary) == "white"
    assert title_gender("Puma Men's Running Shoe") == "men"


def test_contradictions_are_resolved_by_votes_then_source_priority() -> None:
    def obs(attribute: str, value: str, source: str) -> Observation:
        return Observation("i", attribute, value, source)

    agreed = resolve([obs("colour", "Navy Blue", "catalogue"), obs("colour", "navy", "title"),
                      obs("colour", "blue", "image")])[("i", "colour")]
    assert (agreed.value, agreed.sources, agreed.candidates) == ("navy", ("catalogue", "title"), ("blue", "navy"))
    two_against_one = resolve([obs("colour", "Black", "catalogue"), obs("colour", "Blue", "title"),
                               obs("colour", "blue", "image")])[("i", "colour")]
    assert two_against_one.value == "blue" and two_against_one.sources == ("title", "image")
    tie = resolve([obs("colour", "Red", "image"), obs("colour", "Maroon", "catalogue")])[("i", "colour")]
    assert tie.value == "maroon"  # one vote each: the catalogue outranks the photo
    repeated = resolve([obs("gender", "Women", "title"), obs("gender", "men", "title"), obs("gender", "", "image"),
                        obs("gender", "Men", "catalogue")])[("i", "gender")]
    assert repeated.value == "men" and repeated.sources == ("catalogue",)  # one vote per source: title's first
    assert resolve([obs("keyword", "cap", "title")]) == {}  # only single-valued attributes are resolved


def test_brand_prefixes_follow_title_statistics() -> None:
    titles = (["Peter England Men Shirt"] * 12 + ["Turtle Check Men Shirt"] * 3 + ["Turtle Men Jeans"] * 9
              + ["Red Tape Men Shoes"] * 10 + ["Red Rose Women Top"] * 10)
    brands = BrandModel.fit(titles, generic=["red"])
    assert brands.brand("Peter England Men Blue Shirt") == "peter england"
    assert brands.brand("Turtle Check Men Navy Blue Shirt") == "turtle"
    assert brands.brand("Red Tape Men Brown Shoes") == "red tape"
    assert brands.brand("Men Blue Shirt") == "" and brands.brand("Unknown Label Shirt") == ""


def test_padded_matrix_has_a_padding_row_and_a_present_mask() -> None:
    matrix, present = padded_matrix([7, 3, 9], {3: np.ones(2), 9: np.full(2, 2.0)}, 2)
    assert matrix.dtype == np.float32 and matrix.shape == (4, 2)
    assert present.tolist() == [False, False, True, True]
    assert matrix.tolist() == [[0, 0], [0, 0], [1, 1], [2, 2]]


@needs_data
def test_fashion_facts_are_valid_triples() -> None:
    items = load_items()[:4]
    photos = read_images(DEFAULT_FOLDER / IMAGES_TAR, [it.id for it in items])
    assert len(photos) == 4 and all(p.shape == (80, 60, 3) for p in photos.values())
    images = {i: image_attributes(p) for i, p in photos.items()}
    colours = colour_vocabulary([it.base_colour for it in items] + list(PALETTE))
    facts = list(fashion_facts(items, TfIdf.fit([it.title for it in items]), images,
                               BrandModel.fit([it.title for it in items] * 10), colours, top=3))
    triples = [from_fact(f) for f in facts]
    nodes = [t for t in triples if t.rel is None]
    assert [n.head_id for n in nodes] == [f"fashion:{it.id}" for it in items]
    assert nodes[0].head_props["title"] == items[0].title and len(nodes[0].head_props["colour_fractions"]) == 13
    has = {(t.head_id, t.props["relation"]): t.tail_id for t in triples if t.rel == "HAS"}
    first = f"fashion:{items[0].id}"  # 1535 Puma Unisex Logo Cap, Black
    assert has[(first, "colour")] == "colour:black" and has[(first, "gender")] == "gender:unisex"
    assert has[(first, "brand")] == "brand:puma"
    categories = [t.tail_id for t in triples if t.rel == "IN_CATEGORY" and t.head_id == first]
    assert categories == ["fashion:accessories", "fashion:accessories/headwear", "fashion:accessories/headwear/caps"]
    keywords = [t for t in triples if t.rel == "HAS_KEYWORD"]
    assert keywords and all(t.props["tfidf"] > 0 for t in keywords)
    assert sum(t.head_id == first for t in keywords) == 3


def test_kg_facts_are_deduplicated_and_named(tmp_path) -> None:
    (tmp_path / "kg.txt").write_text("5 0 100\n5 1 200\n5 1 200\n6 2 300\n6 2 301\n")
    (tmp_path / "relations.txt").write_text("cat_id:0\nseller_id:1\nbrand_id:2\n")
    facts = list(kg_facts(tmp_path / "kg.txt", prefix="t:"))
    assert [(f.head_id, f.rel, f.tail_id, f.props) for f in facts] == [
        ("t:5", "IN_CATEGORY", "t:100", {}), ("t:5", "HAS", "t:seller:200", {"relation": "seller"}),
        ("t:6", "HAS", "t:brand:300", {"relation": "brand"}), ("t:6", "HAS", "t:brand:301", {"relation": "brand"}),
    ]
    assert all(from_fact(f) for f in facts)


@pytest.mark.usefixtures("one_torch_thread")
def test_title_embeddings_load_offline_and_rank_similar_titles_closer(tmp_path, monkeypatch) -> None:
    from model.text_features import embed_texts

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any network attempt would fail
    titles = ["Peter England Men Navy Blue Formal Shirt", "Turtle Men Blue Check Shirt", "Lakme Red Lipstick"]
    vectors = embed_texts(titles, cache_dir=tmp_path)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1
    cached = list(tmp_path.glob("minilm-*.npy"))
    assert len(cached) == 1 and np.array_equal(np.load(cached[0]), vectors)
    assert np.array_equal(embed_texts(titles, cache_dir=tmp_path), vectors)


def test_retrieval_top_k_counts_ties_against() -> None:
    from model.visual import retrieval_top_k

    keys = np.eye(4, dtype=np.float32)
    assert retrieval_top_k(keys, keys, 1) == 1.0
    assert retrieval_top_k(keys, keys[[1, 0, 2, 3]], 1) == 0.5
    assert retrieval_top_k(np.ones((4, 4), dtype=np.float32), keys, 3) == 0.0  # all tied: rank 4


@needs_data
@pytest.mark.usefixtures("one_torch_thread")
def test_visual_cnn_learns_on_a_few_real_photos() -> None:
    import torch

    from model.visual import AlignedModel, photo_tensor

    torch.manual_seed(0)
    items = load_items()[:16]
    photos = read_images(DEFAULT_FOLDER / IMAGES_TAR, [it.id for it in items])
    x = photo_tensor([photos[it.id] for it in items])
    assert x.shape == (16, 3, 80, 60) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    text = torch.nn.functional.normalize(torch.randn(16, 384), dim=-1)
    types = torch.arange(16) % 4
    model = AlignedModel(n_types=4, dim=16, width=4)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model.loss(x, text, types, type_weight=0.5)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    assert model.image(x).shape == (16, 16)


def test_image_arrays_join_attributes_and_visual_embeddings(tmp_path) -> None:
    from model.fashion import image_arrays
    from model.image_features import ATTRIBUTE_DIM

    photos = {3: _solid((220, 20, 30)), 9: _solid((20, 30, 100))}
    matrix, present = image_arrays([9, 5, 3], photos)
    assert matrix.shape == (4, ATTRIBUTE_DIM) and present.tolist() == [False, True, False, True]
    assert matrix[1, 5 + PALETTE.index("navy")] == 1.0 and matrix[3, 5 + PALETTE.index("red")] == 1.0
    np.savez(tmp_path / "v.npz", ids=np.array([9], dtype=np.int64), vectors=np.full((1, 2), 0.5, np.float32))
    matrix, present = image_arrays([9, 5, 3], photos, visual=tmp_path / "v.npz")
    assert matrix.shape == (4, ATTRIBUTE_DIM + 2) and present.tolist() == [False, True, False, False]
    assert matrix[1, -2:].tolist() == [0.5, 0.5]
