"""A small CNN trained from scratch on the product photos: a visual item embedding (no pretrained weights here).

Training aligns each photo with its title's sentence embedding (CLIP-style symmetric InfoNCE over the batch)
and, as an auxiliary, predicts the articleType from the visual embedding. A fixed share of items (20% by
default, by a seeded permutation) is held out of training entirely; :func:`evaluate_visual` measures on them
image -> title retrieval top-10 (against chance = 10 / n_heldout) and articleType top-1 by the nearest training
photo, which says whether the embedding means something.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

HEIGHT, WIDTH = 80, 60


def photo_tensor(photos: Sequence[np.ndarray]) -> Tensor:
    """uint8 RGB photos ``[h, w, 3]`` -> float32 ``[n, 3, 80, 60]`` in [0, 1] (odd sizes resized to 60x80)."""
    fitted = [
        p if p.shape[:2] == (HEIGHT, WIDTH) else np.asarray(Image.fromarray(p).resize((WIDTH, HEIGHT), Image.BILINEAR))
        for p in photos
    ]
    return torch.from_numpy(np.stack(fitted)).permute(0, 3, 1, 2).float().div_(255.0)


class VisualEncoder(nn.Module):
    """Photo -> unit-norm embedding.

    Four blocks of conv3x3-BatchNorm-ReLU-maxpool2 (``width``, 2x, 4x, 4x channels), global average pooling
    and a linear map to ``dim``. Input float32 ``[B, 3, 80, 60]`` in [0, 1]; output float32 ``[B, dim]``.
    """

    def __init__(self, dim: int = 128, width: int = 24) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(channels[-1], dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.out(self.features(x - 0.5).mean(dim=(2, 3))), dim=-1)


class AlignedModel(nn.Module):
    """The encoder plus what training needs: a linear text projection ``[B, text_dim] -> [B, dim]`` (unit
    norm), a learned InfoNCE temperature and an articleType head ``[B, dim] -> [B, n_types]``."""

    def __init__(self, n_types: int, text_dim: int = 384, dim: int = 128, width: int = 24) -> None:
        super().__init__()
        self.image = VisualEncoder(dim, width)
        self.text = nn.Linear(text_dim, dim)
        self.type_head = nn.Linear(dim, n_types)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def text_embedding(self, text: Tensor) -> Tensor:
        return F.normalize(self.text(text), dim=-1)

    def loss(self, photos: Tensor, text: Tensor, types: Tensor, type_weight: float) -> Tensor:
        """Symmetric InfoNCE between the batch's photos and titles + ``type_weight`` x articleType CE."""
        image, title = self.image(photos), self.text_embedding(text)
        logits = self.log_scale.clamp(max=np.log(100.0)).exp() * image @ title.T
        target = torch.arange(len(photos))
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return contrastive + type_weight * F.cross_entropy(self.type_head(image), types)


@dataclass
class VisualConfig:
    dim: int = 128
    width: int = 24
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    type_weight: float = 0.5
    heldout: float = 0.2
    seed: int = 0


@dataclass
class VisualRun:
    """A trained model, which item ids it trained on / held out, metrics and training seconds."""

    model: AlignedModel
    train_ids: list[int]
    heldout_ids: list[int]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def split_items(item_ids: Sequence[int], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded permutation of ``item_ids`` cut into (train, held-out), held-out = ``round(heldout * n)``."""
    order = np.random.default_rng(seed).permutation(len(item_ids))
    n_out = round(heldout * len(item_ids))
    return [item_ids[i] for i in sorted(order[n_out:])], [item_ids[i] for i in sorted(order[:n_out])]


def train_visual(
    photos: Mapping[int, np.ndarray], titles: Mapping[int, np.ndarray], types: Mapping[int, str],
    config: VisualConfig, progress: bool = True,
) -> VisualRun:
    """Train on the items with a photo, a title embedding and a type, minus the held-out split; then evaluate.

    ``titles[item]`` is the float32 ``[384]`` title embedding, ``types[item]`` the articleType name.
    """
    torch.manual_seed(config.seed)
    ids = sorted(set(photos) & set(titles) & set(types))
    train_ids, heldout_ids = split_items(ids, config.heldout, config.seed)
    type_names = sorted({types[i] for i in ids})
    type_index = {name: k for k, name in enumerate(type_names)}
    x = photo_tensor([photos[i] for i in train_ids])
    t = torch.from_numpy(np.stack([titles[i] for i in train_ids]))
    y = torch.tensor([type_index[types[i]] for i in train_ids])
    model = AlignedModel(len(type_names), t.shape[1], config.dim, config.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train_ids) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="visual CNN", disable=not progress)
    model.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(train_ids), generator=generator).split(config.batch_size):
            if len(batch) < 2:
                continue
            images = x[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = model.loss(images, t[batch], y[batch], config.type_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    run = VisualRun(model.eval(), train_ids, heldout_ids, time.perf_counter() - start)
    run.metrics = evaluate_visual(run, photos, titles, types)
    return run


@torch.no_grad()
def embed_photos(model: AlignedModel, photos: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Visual embeddings float32 ``[len(photos), dim]`` (unit norm) in eval mode."""
    model.eval()
    x = photo_tensor(photos)
    return torch.cat([model.image(b) for b in x.split(batch_size)]).numpy()


def retrieval_top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> float:
    """Share of rows ``i`` whose own key ``keys[i]`` is among the top ``k`` keys for ``queries[i]`` by dot
    product. Ties count against: the rank is 1 + the number of other keys scoring at least as high, so
    duplicate titles do not help. ``queries`` ``[n, d]``, ``keys`` ``[n, d]``."""
    scores = queries @ keys.T
    own = np.diag(scores)
    rank = 1 + (scores >= own[:, None]).sum(axis=1) - 1
    return float(np.mean(rank <= k))


@torch.no_grad()
def evaluate_visual(
    run: VisualRun, photos: Mapping[int, np.ndarray], titles: Mapping[int, np.ndarray], types: Mapping[int, str]
) -> dict[str, float]:
    """Held-out checks: image -> title top-10 and top-1 (chance 10 / n and 1 / n), the same among training items
    (how much is memorised), articleType top-1 of the nearest training photo (and the majority-type rate)."""
    metrics: dict[str, float] = {"n_train": len(run.train_ids), "n_heldout": len(run.heldout_ids)}
    for split, ids in (("heldout", run.heldout_ids), ("train", run.train_ids)):
        images = embed_photos(run.model, [photos[i] for i in ids])
        text = run.model.text_embedding(torch.from_numpy(np.stack([titles[i] for i in ids]))).numpy()
        metrics[f"{split}_image_to_title_top10"] = retrieval_top_k(images, text, 10)
        metrics[f"{split}_image_to_title_top1"] = retrieval_top_k(images, text, 1)
        metrics[f"{split}_chance_top10"] = min(1.0, 10 / len(ids))
    train_images = embed_photos(run.model, [photos[i] for i in run.train_ids])
    held_images = embed_photos(run.model, [photos[i] for i in run.heldout_ids])
    nearest = np.argmax(held_images @ train_images.T, axis=1)
    truth = [types[i] for i in run.heldout_ids]
    metrics["heldout_type_nn_top1"] = float(np.mean([types[run.train_ids[j]] == t for j, t in zip(nearest, truth,
                                                                                                   strict=True)]))
    train_types = [types[i] for i in run.train_ids]
    majority = max(set(train_types), key=train_types.count)
    metrics["heldout_type_majority"] = float(np.mean([t == majority for t in truth]))
    return metrics


def save_run(run: VisualRun, photos: Mapping[int, np.ndarray], folder: str | Path) -> Path:
    """``visual.safetensors`` (weights) and ``visual_embeddings.npz`` (``ids`` int64 ``[n]``, ``vectors``
    float32 ``[n, dim]`` for every photo, held-out ones included, and ``heldout`` int64 ids) under ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, str(folder / "visual.safetensors"))
    ids = sorted(photos)
    np.savez(folder / "visual_embeddings.npz", ids=np.asarray(ids, dtype=np.int64),
             vectors=embed_photos(run.model, [photos[i] for i in ids]),
             heldout=np.asarray(run.heldout_ids, dtype=np.int64))
    return folder / "visual_embeddings.npz"
