"""``igrec items ...``: item features and item knowledge of the fashion catalogue, from the command line.

Subcommands: ``keywords`` (TF-IDF table), ``colours`` (photo attributes table), ``images`` (train the visual
CNN, print held-out retrieval against chance), ``facts`` (item-side knowledge facts as JSON lines) and
``picture`` (a PNG of a few items with their keywords and attributes). torch is imported only by ``images``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.fashion import DEFAULT_FOLDER, IMAGES_TAR, FashionItem, load_items

DESCRIPTION = """Item features and knowledge for the fashion catalogue (shared/data/fashion_product_images_small):
TF-IDF keywords of titles (paper eqs. 4-7), photo attributes (size, colour distribution), a small CNN trained
from scratch as visual embedding, and the item-side knowledge facts for Neo4j."""


def _sample(items: list[FashionItem], n: int, seed: int, ids: Sequence[int] | None) -> list[int]:
    """Indices into ``items``: the given ``ids`` in order, else ``n`` seeded random items sorted by id."""
    if ids:
        where = {it.id: k for k, it in enumerate(items)}
        missing = [i for i in ids if i not in where]
        if missing:
            sys.exit(f"item ids not in the catalogue subset: {missing}")
        return [where[i] for i in ids]
    return sorted(np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False).tolist())


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _photos(folder: Path, ids: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    from model.image_features import read_images

    return read_images(folder / IMAGES_TAR, ids)


def run_keywords(args: argparse.Namespace) -> None:
    from model.text_features import TfIdf

    items = load_items(args.data)
    tfidf = TfIdf.fit([it.title for it in items])
    rows = []
    for k in _sample(items, args.sample, args.seed, args.ids):
        words = ", ".join(f"{w} {f:.3f}" for w, f in tfidf.keywords(k, args.top))
        rows.append((items[k].id, items[k].title, words))
    print(f"TF-IDF over {len(items)} titles, {len(tfidf.idf)} distinct words; F = tf * (lg(beta/beta_x) + 1)")
    print(_table(("id", "title", f"top-{args.top} keywords (F)"), rows))


def run_colours(args: argparse.Namespace) -> None:
    from model.image_features import PALETTE, image_attributes
    from model.knowledge import normalise

    items = load_items(args.data)
    photos = _photos(Path(args.data))
    attributes = {i: image_attributes(p) for i, p in photos.items()}
    rows = []
    for k in _sample(items, args.sample, args.seed, args.ids):
        it, a = items[k], attributes[items[k].id]
        top = ", ".join(f"{n} {f:.2f}" for n, f in sorted(a.colours.items(), key=lambda kv: -kv[1])[:4] if f > 0)
        rows.append((it.id, it.title[:40], it.base_colour, f"{a.width}x{a.height}", f"{a.aspect:.2f}",
                     f"{a.white_background:.2f}", "/".join(a.dominant), top))
    print(_table(("id", "title", "catalogue colour", "size", "aspect", "white bg", "dominant", "distribution"),
                 rows))
    comparable = [(normalise(it.base_colour), attributes[it.id]) for it in items
                  if it.id in attributes and normalise(it.base_colour) in PALETTE]
    top1 = np.mean([max(a.colours, key=a.colours.get) == c for c, a in comparable])
    within = np.mean([c in a.dominant for c, a in comparable])
    counts = Counter(c for c, _ in comparable)
    common, n_common = counts.most_common(1)[0]
    print(f"\nphoto vs catalogue colour on the {len(comparable)} items whose catalogue colour is a palette name: "
          f"top colour agrees {top1:.1%}, catalogue colour among the dominant {within:.1%} "
          f"({len(PALETTE)} palette colours; always answering the most common, {common}, agrees "
          f"{n_common / len(comparable):.1%})")


def run_images(args: argparse.Namespace) -> None:
    import torch

    from model.text_features import embed_texts
    from model.visual import VisualConfig, save_run, train_visual

    torch.set_num_threads(args.threads)
    items = load_items(args.data)
    photos = _photos(Path(args.data))
    titled = [it for it in items if it.title]
    vectors = embed_texts([it.title for it in titled], progress=True)
    titles = {it.id: v for it, v in zip(titled, vectors, strict=True)}
    types = {it.id: it.article_type for it in items if it.article_type}
    config = VisualConfig(epochs=args.epochs, dim=args.dim, width=args.width, heldout=args.heldout, seed=args.seed,
                          type_weight=args.type_weight)
    run = train_visual(photos, titles, types, config)
    m = run.metrics
    print(_table(("metric", "value"), [
        ("items train / held-out", f"{m['n_train']} / {m['n_heldout']}"),
        ("training seconds", f"{run.seconds:.0f} ({args.threads} thread(s), {args.epochs} epochs)"),
        ("held-out image->title top-10", f"{m['heldout_image_to_title_top10']:.4f}"),
        ("  chance 10/n_heldout", f"{m['heldout_chance_top10']:.4f}"),
        ("held-out image->title top-1", f"{m['heldout_image_to_title_top1']:.4f}"),
        ("  chance 1/n_heldout", f"{1 / m['n_heldout']:.4f}"),
        ("train image->title top-10 (among train)", f"{m['train_image_to_title_top10']:.4f}"),
        ("  chance 10/n_train", f"{m['train_chance_top10']:.4f}"),
        ("held-out articleType top-1, nearest train photo", f"{m['heldout_type_nn_top1']:.4f}"),
        ("  majority articleType rate", f"{m['heldout_type_majority']:.4f}"),
    ]))
    if args.out:
        print(f"saved {save_run(run, photos, args.out)}")


def run_facts(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from model.facts import write_facts
    from model.image_features import PALETTE, image_attributes
    from model.knowledge import BrandModel, colour_vocabulary, fashion_facts, kg_facts
    from model.text_features import TfIdf

    folder = Path(args.data)
    items = load_items(folder)
    full = load_items(folder, subset=False)
    colours = colour_vocabulary([it.base_colour for it in full] + list(PALETTE))
    brands = BrandModel.fit((it.title for it in full), generic=[w for c in colours for w in c.split()])
    attributes = {i: image_attributes(p) for i, p in _photos(folder).items()}
    tfidf = TfIdf.fit([it.title for it in items])
    facts = fashion_facts(items, tfidf, attributes, brands, colours, top=args.top, prefix=args.prefix)
    sources = [facts] + [kg_facts(path, prefix) for path, prefix in args.kg]
    facts = (fact for source in sources for fact in tqdm(source, desc="facts", unit=" facts", mininterval=1.0))
    count = write_facts(args.out, facts)
    print(f"wrote {count} facts to {args.out}")


def run_picture(args: argparse.Namespace) -> None:
    from model.image_features import PALETTE, image_attributes
    from model.items_picture import draw_items
    from model.knowledge import BrandModel, colour_vocabulary, fashion_observations, resolve
    from model.text_features import TfIdf

    folder = Path(args.data)
    items = load_items(folder)
    chosen = _sample(items, args.sample, args.seed, args.ids)
    photos = _photos(folder, [items[k].id for k in chosen])
    full = load_items(folder, subset=False)
    colours = colour_vocabulary([it.base_colour for it in full] + list(PALETTE))
    brands = BrandModel.fit((it.title for it in full), generic=[w for c in colours for w in c.split()])
    tfidf = TfIdf.fit([it.title for it in items])
    cards = []
    for k in chosen:
        it = items[k]
        image = image_attributes(photos[it.id])
        resolved = resolve(fashion_observations(it, str(it.id), colours, brands, image))
        cards.append((it, photos[it.id], tfidf.keywords(k, args.top), image,
                      {rel: r for (_, rel), r in sorted(resolved.items())}))
    draw_items(cards, args.out)
    print(f"wrote {args.out}")


def _kg_arg(value: str) -> tuple[str, str]:
    path, _, prefix = value.partition("=")
    return path, prefix


def add_items_subcommand(subparsers) -> None:
    """Register ``items`` and its subcommands on ``subparsers``."""
    items = subparsers.add_parser("items", help="fashion item features and knowledge (keywords, photos, facts)",
                                  description=DESCRIPTION)
    commands = items.add_subparsers(dest="items_command", required=True)

    def common(p: argparse.ArgumentParser, sample: int = 10) -> None:
        p.add_argument("--data", type=Path, default=DEFAULT_FOLDER, help="fashion_product_images_small folder")
        p.add_argument("--sample", type=int, default=sample, help="how many random items to show")
        p.add_argument("--ids", type=int, nargs="*", help="show these item ids instead of a random sample")
        p.add_argument("--seed", type=int, default=0, help="seed of the random sample / split")

    p = commands.add_parser("keywords", help="top-M TF-IDF keywords of sample titles (paper eqs. 4-7)",
                            description="F = tf * idf with tf = n_{x,s}/N_s and idf = lg(beta/beta_x) + 1, fitted "
                            "on all catalogue titles; stop words removed, Chinese segmented with jieba.")
    common(p)
    p.add_argument("--top", type=int, default=5, help="M, keywords per item")
    p.set_defaults(func=run_keywords)

    p = commands.add_parser("colours", help="photo size, aspect, white background and colour distribution",
                            description="Attributes of sample photos, and how often the photo's top colour "
                            "agrees with the catalogue colour.")
    common(p)
    p.set_defaults(func=run_colours)

    p = commands.add_parser("images", help="train the visual CNN; held-out image->title top-10 vs chance",
                            description="Train a small CNN from scratch, aligned with the title embeddings "
                            "(InfoNCE) plus an articleType head, on all but a held-out share of items; print "
                            "held-out image->title retrieval top-10 against chance and articleType top-1 by the "
                            "nearest training photo.")
    p.add_argument("--data", type=Path, default=DEFAULT_FOLDER, help="fashion_product_images_small folder")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--dim", type=int, default=128, help="visual embedding size")
    p.add_argument("--width", type=int, default=24, help="channels of the first conv block")
    p.add_argument("--heldout", type=float, default=0.2, help="share of items never trained on")
    p.add_argument("--type-weight", type=float, default=0.5, help="weight of the articleType loss")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="artifacts/visual",
                   help="folder for visual.safetensors and visual_embeddings.npz ('' to skip)")
    p.set_defaults(func=run_images)

    p = commands.add_parser("facts", help="item-side knowledge facts as JSON lines (model.facts.Fact fields)",
                            description="One JSON object per line with the Fact fields head_label, head_id, rel, "
                            "tail_label, tail_id, props, head_props, tail_props: item nodes, IN_CATEGORY, "
                            "HAS {relation} (resolved colour, gender, season, usage, brand), HAS_KEYWORD {tfidf}; "
                            "plus, with --kg, the facts of session_kg_dsrhk kg.txt files.")
    p.add_argument("--data", type=Path, default=DEFAULT_FOLDER, help="fashion_product_images_small folder")
    p.add_argument("--out", type=Path, required=True, help="output .jsonl")
    p.add_argument("--top", type=int, default=5, help="keywords per item")
    p.add_argument("--prefix", default="fashion:", help="id prefix of fashion items and categories")
    p.add_argument("--kg", type=_kg_arg, action="append", default=[], metavar="KG_TXT[=PREFIX]",
                   help="also write the facts of this kg.txt, ids prefixed with PREFIX (repeatable)")
    p.set_defaults(func=run_facts)

    p = commands.add_parser("picture", help="PNG of sample items: photo, title, keywords, attributes, colours")
    common(p, sample=6)
    p.add_argument("--top", type=int, default=5, help="keywords per item")
    p.add_argument("--out", type=Path, default=Path("docs/items.png"))
    p.set_defaults(func=run_picture)


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="igrec")
    add_items_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
