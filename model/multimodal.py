"""Multimodal item encoder: an id embedding fused with text, image and knowledge-graph features.

ARCHITECTURE.md "Multimodal items". :class:`MultimodalItemEncoder` implements the item-encoder hook of
:mod:`model.network` (``forward(ids) -> [..., D]``, ``table() -> [n_items + 1, D]``), so IGRec and GRU4Rec
take it unchanged.

Modalities:

* **id** — ``nn.Embedding(n_items + 1, D)``, row 0 = padding (always present).
* **dense** — any number of named float32 feature matrices ``[n_items + 1, F]`` with a bool ``present``
  mask ``[n_items + 1]`` (text embeddings F=384, image embeddings, image attributes), each projected to
  D by ``Linear(F, D) + LayerNorm``. A modality named ``text`` is part of the *query* (with the id);
  the others are attention tokens.
* **knowledge** — per item up to ``kg_max`` (relation, entity) pairs from a ``kg.txt`` (``item relation
  entity``); token = entity embedding + relation embedding. Entity/relation ids are renumbered from 1
  (0 = no pair).

Fusion (per item; M items, T tokens, H heads)::

    query  q = id_emb + text_proj * has_text                         [M, D]
    tokens t = [dense tokens..., knowledge tokens...]                [M, T, D], mask [M, T]
    ctx      = multi-head attention(q, t, t) with masked tokens      [M, D]
    fused    = W_o ctx;  g = sigmoid(W_g [q; fused])                 [M, D]  (bias starts closed)
    out      = q + any(mask) * g * fused;  out[id == 0] = 0          [M, D]

An item with no token is exactly its query (its id embedding when it has no text); masked tokens get zero
attention weight, so a masked-out feature cannot change the output. The gate lets the model fall back to
the id embedding per dimension; its bias starts at ``gate_bias`` (-2: 12 % open) so training begins from
the id-only model and opens the gate where the other modalities help.

Alignment loss (:meth:`MultimodalItemEncoder.alignment_loss`): **symmetric InfoNCE** (contrastive)
between the id view and each other modality's view of the same items (a modality's view = its projected
token, mean over valid knowledge tokens). Why contrastive rather than moment matching (CORAL/MMD): the
views are *paired* (the same item seen through its id and through its knowledge), and InfoNCE uses that
pairing: it pulls an item's id embedding towards its own knowledge representation and away from other
items' (alignment + uniformity, Wang & Isola 2020), which is what transfers information to rarely-clicked
items that share a category/brand/seller with frequent ones. Moment matching only equalises the marginal
mean/covariance, which any rotation or permutation of items satisfies, so it carries no per-item signal.
InfoNCE also aligns the distributions: at its optimum the joint of (id view, modality view) is
concentrated on the pairs.

The encoder's parameters come in named groups (``id``, each dense modality's name, ``knowledge``,
``fusion``) through :meth:`MultimodalItemEncoder.parameter_groups`, which ``model.train`` turns into
optimiser groups with their own learning rates. :func:`freeze_item_encoder` replaces the encoder by a
plain :class:`~model.network.ItemEmbedding` holding the fused table (a constant at inference), which is
what the ONNX exporter exports.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.knowledge import read_kg as knowledge_rows
from model.network import NEG, ItemEmbedding

TEXT = "text"
KNOWLEDGE = "knowledge"


@dataclass
class EncoderConfig:
    """Shape and options of a :class:`MultimodalItemEncoder` (a plain dict in checkpoints).

    Attributes:
        n_items: largest item id (rows ``0..n_items``).
        dim: output size D (the network's ``dim``).
        dense: dense modality name -> feature size F.
        n_entities: knowledge entities (0 = no knowledge modality).
        n_relations: knowledge relations.
        kg_max: (relation, entity) pairs kept per item.
        heads: attention heads (D must divide by it).
        gate_bias: initial bias of the fusion gate (sigmoid(-2) = 0.12: starts near the id embedding).
        token_dropout: probability of masking each attention token during training (modality dropout).
        align_weight: weight of the InfoNCE alignment loss in the training loss (0 = off).
        align_temperature: InfoNCE temperature.
        align_max_items: items per alignment batch (random subset of the batch's items).
        sources: where the features came from (path and sha256 per modality), informational.
    """

    n_items: int
    dim: int
    dense: dict[str, int] = field(default_factory=dict)
    n_entities: int = 0
    n_relations: int = 0
    kg_max: int = 16
    heads: int = 2
    gate_bias: float = -2.0
    token_dropout: float = 0.0
    align_weight: float = 0.1
    align_temperature: float = 0.2
    align_max_items: int = 1024
    sources: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kg_slots(path: str | Path, n_items: int, kg_max: int = 16) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-item padded knowledge pairs from ``item relation entity`` lines (DSR-HK ``kg.txt``).

    Returns ``(relations int64 [n_items + 1, kg_max], entities int64 [n_items + 1, kg_max], n_entities,
    n_relations)``; ids renumbered from 1 (0 = no pair), pairs in file order, duplicates removed, at most
    ``kg_max`` per item; heads outside ``1..n_items`` are dropped (not in the split).
    """
    triples = knowledge_rows(path)
    triples = triples[(triples[:, 0] >= 1) & (triples[:, 0] <= n_items)]
    _, rel = np.unique(triples[:, 1], return_inverse=True)
    _, ent = np.unique(triples[:, 2], return_inverse=True)
    order = np.argsort(triples[:, 0], kind="stable")
    head = triples[order, 0]
    start = np.searchsorted(head, head, side="left")
    rank = np.arange(len(head)) - start
    keep = rank < kg_max
    relations = np.zeros((n_items + 1, kg_max), np.int64)
    entities = np.zeros((n_items + 1, kg_max), np.int64)
    relations[head[keep], rank[keep]] = rel[order][keep] + 1
    entities[head[keep], rank[keep]] = ent[order][keep] + 1
    return relations, entities, int(ent.max(initial=-1)) + 1, int(rel.max(initial=-1)) + 1


def read_dense(path: str | Path, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [n_items + 1, F], present bool [n_items + 1])`` from a ``.npz`` with arrays
    ``features`` and ``present`` (or a ``.npy`` of features, present = non-zero rows). Row 0 is never
    present; missing trailing rows are absent."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            feats, present = z["features"].astype(np.float32), z["present"].astype(bool)
    else:
        feats = np.load(path, allow_pickle=False).astype(np.float32)
        present = np.abs(feats).sum(1) > 0
    if feats.shape[0] > n_items + 1:
        raise ValueError(f"{path}: {feats.shape[0]} rows, the split has items 0..{n_items}")
    out = np.zeros((n_items + 1, feats.shape[1]), np.float32)
    mask = np.zeros(n_items + 1, bool)
    out[: len(feats)], mask[: len(present)] = feats, present
    mask[0] = False
    out[~mask] = 0.0
    return out, mask


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of paired views ``a [M, D]``, ``b [M, D]`` (row i of each = item i); scalar.

    Cosine similarities / temperature; cross-entropy towards the diagonal in both directions. Its minimum
    is reached when every pair is closer than all non-pairs, i.e. when the two views' distributions are
    aligned item by item.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class MultimodalItemEncoder(nn.Module):
    """Item encoder hook fusing id, dense (text/image) and knowledge modalities (see module docstring).

    forward(ids LongTensor [...]) -> [..., D];  table() -> [n_items + 1, D] (row 0 = 0).
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        n, d = config.n_items + 1, config.dim
        if d % config.heads:
            raise ValueError(f"dim {d} is not divisible by heads {config.heads}")
        self.id = ItemEmbedding(config.n_items, d)
        self.dense = nn.ModuleDict({name: nn.Sequential(nn.Linear(f, d), nn.LayerNorm(d))
                                    for name, f in config.dense.items()})
        for name, f in config.dense.items():
            self.register_buffer(f"features_{name}", torch.zeros(n, f))
            self.register_buffer(f"present_{name}", torch.zeros(n, dtype=torch.bool))
        if config.n_entities:
            self.entity = nn.Embedding(config.n_entities + 1, d, padding_idx=0)
            self.relation = nn.Embedding(config.n_relations + 1, d, padding_idx=0)
            for emb in (self.entity, self.relation):
                nn.init.uniform_(emb.weight, -1.0 / math.sqrt(d), 1.0 / math.sqrt(d))
                with torch.no_grad():
                    emb.weight[0].zero_()
            self.register_buffer("kg_relations", torch.zeros(n, config.kg_max, dtype=torch.long))
            self.register_buffer("kg_entities", torch.zeros(n, config.kg_max, dtype=torch.long))
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.gate = nn.Linear(2 * d, d)
        nn.init.constant_(self.gate.bias, config.gate_bias)
        self._cache: tuple[bool, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------------------- data

    def set_dense(self, name: str, features, present) -> None:
        """Load a dense modality: features [n_items + 1, F], present bool [n_items + 1]."""
        self._cache = None
        getattr(self, f"features_{name}").copy_(torch.as_tensor(features))
        getattr(self, f"present_{name}").copy_(torch.as_tensor(present))

    def set_knowledge(self, relations, entities) -> None:
        """Load the knowledge pairs: relations, entities int64 [n_items + 1, kg_max] (0 = none)."""
        self._cache = None
        self.kg_relations.copy_(torch.as_tensor(relations))
        self.kg_entities.copy_(torch.as_tensor(entities))

    # ----------------------------------------------------------------------------------------- views

    def _dense_view(self, name: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected features [M, D], present [M]) of modality ``name`` for ``ids [M]``."""
        feats = getattr(self, f"features_{name}")[ids]
        present = getattr(self, f"present_{name}")[ids]
        return self.dense[name](feats) * present[:, None].to(feats.dtype), present

    def _knowledge_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(entity + relation tokens [M, kg_max, D], valid mask [M, kg_max]) for ``ids [M]``."""
        ent = self.kg_entities[ids]
        return self.entity(ent) + self.relation(self.kg_relations[ids]), ent > 0

    def _query(self, ids: torch.Tensor) -> torch.Tensor:
        """id embedding (+ projected text where present) [M, D]."""
        query = self.id(ids)
        if TEXT in self.dense:
            query = query + self._dense_view(TEXT, ids)[0]
        return query

    def _tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All attention tokens [M, T, D] and their mask [M, T] bool; None when there are no such modalities."""
        tokens, masks = [], []
        for name in self.dense:
            if name != TEXT:
                view, present = self._dense_view(name, ids)
                tokens.append(view[:, None])
                masks.append(present[:, None])
        if self.config.n_entities:
            tok, valid = self._knowledge_tokens(ids)
            tokens.append(tok)
            masks.append(valid)
        if not tokens:
            return None
        mask = torch.cat(masks, 1)
        if self.training and self.config.token_dropout > 0:
            mask = mask & (torch.rand(mask.shape, device=mask.device) >= self.config.token_dropout)
        return torch.cat(tokens, 1), mask

    def _attend(self, query: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked multi-head cross-attention: query [M, D] over tokens [M, T, D] -> context [M, D]."""
        m, t, d = tokens.shape
        h = self.config.heads
        q = self.q(query).view(m, h, 1, d // h)
        k = self.k(tokens).view(m, t, h, d // h).transpose(1, 2)
        v = self.v(tokens).view(m, t, h, d // h).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(d // h)
        keep = mask[:, None, :]
        attn = torch.softmax(logits.float().masked_fill(~keep, NEG), -1) * keep.to(torch.float32)
        return (attn.to(v.dtype)[..., None] * v).sum(2).reshape(m, d)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Fused embeddings [M, D] of flat ``ids [M]`` (see the module docstring)."""
        query = self._query(ids)
        toks = self._tokens(ids)
        out = query
        if toks is not None:
            tokens, mask = toks
            fused = self.out(self._attend(query, tokens, mask))
            gate = torch.sigmoid(self.gate(torch.cat([query, fused], -1)))
            out = query + mask.any(1, keepdim=True).to(fused.dtype) * gate * fused
        return out * (ids > 0)[:, None].to(out.dtype)

    # ----------------------------------------------------------------------------------------- the hook

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table())

    def table(self) -> torch.Tensor:
        """[n_items + 1, D], computed once and reused by every lookup until the weights may change.

        IGRec looks items up several times per step (session nodes, their global neighbours, the last
        click, the score table); gathering rows of one fused table costs one fusion over the n_items + 1
        items instead of one per lookup. The cache is dropped when the table's gradient arrives (so the
        next step, after the optimiser update, recomputes it), on ``train()/eval()``, on
        ``load_state_dict`` and when data is loaded. Without grad in training mode nothing is cached.
        """
        grad = torch.is_grad_enabled()
        if self._cache is not None and self._cache[0] == grad:
            return self._cache[1]
        ids = torch.arange(self.config.n_items + 1, device=self.id.weight.weight.device)
        table = self.encode(ids)
        if grad and table.requires_grad:
            table.register_hook(self._drop_cache)
            self._cache = (grad, table)
        elif not grad and not self.training:
            self._cache = (grad, table)
        return table

    def _drop_cache(self, *_args) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    # ----------------------------------------------------------------------------------------- training

    def alignment_loss(self, ids: torch.Tensor) -> torch.Tensor:
        """``align_weight`` x mean over modalities of InfoNCE(id view, modality view) on the unique
        non-padding ``ids`` that have the modality (at most ``align_max_items``, a random subset); scalar."""
        zero = self.id.weight.weight.new_zeros(())
        if self.config.align_weight <= 0:
            return zero
        ids = torch.unique(ids[ids > 0])
        if len(ids) > self.config.align_max_items:
            ids = ids[torch.randperm(len(ids), device=ids.device)[: self.config.align_max_items]]
        losses = []
        for _name, view, present in self._modality_views(ids):
            if int(present.sum()) >= 2:
                losses.append(info_nce(self.id(ids[present]), view[present], self.config.align_temperature))
        if not losses:
            return zero
        return self.config.align_weight * torch.stack(losses).mean()

    def _modality_views(self, ids: torch.Tensor):
        """(name, view [M, D], present [M]) for every non-id modality of ``ids [M]``."""
        for name in self.dense:
            view, present = self._dense_view(name, ids)
            yield name, view, present
        if self.config.n_entities:
            tok, valid = self._knowledge_tokens(ids)
            w = valid.to(tok.dtype)[..., None]
            yield KNOWLEDGE, (tok * w).sum(1) / w.sum(1).clamp(min=1), valid.any(1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by encoder group: ``id``, each dense modality's name, ``knowledge``, ``fusion``."""
        groups: dict[str, list[nn.Parameter]] = {"id": list(self.id.parameters())}
        for name, module in self.dense.items():
            groups[name] = list(module.parameters())
        if self.config.n_entities:
            groups[KNOWLEDGE] = [*self.entity.parameters(), *self.relation.parameters()]
        groups["fusion"] = [p for m in (self.q, self.k, self.v, self.out, self.gate) for p in m.parameters()]
        return groups

    def spec(self) -> dict:
        """What a checkpoint stores to rebuild this encoder (the data arrays travel as buffers)."""
        return {"kind": "multimodal", "config": self.config.to_dict()}


def build_item_encoder(n_items: int, dim: int, kg: str | None = None, features: dict[str, str] | None = None,
                       **options) -> MultimodalItemEncoder:
    """A :class:`MultimodalItemEncoder` loaded from files: ``kg`` a ``kg.txt``, ``features`` modality name
    -> ``.npz``/``.npy`` path (see :func:`read_dense`); ``options`` are :class:`EncoderConfig` fields."""
    features = features or {}
    kg_max = int(options.get("kg_max", EncoderConfig.kg_max))
    dense = {name: read_dense(path, n_items) for name, path in features.items()}
    sources = {name: {"path": str(Path(p).resolve()), "sha256": sha256_of(p)} for name, p in features.items()}
    knowledge = None
    if kg:
        knowledge = kg_slots(kg, n_items, kg_max)
        sources[KNOWLEDGE] = {"path": str(Path(kg).resolve()), "sha256": sha256_of(kg)}
    config = EncoderConfig(n_items=n_items, dim=dim, dense={k: int(v[0].shape[1]) for k, v in dense.items()},
                           n_entities=knowledge[2] if knowledge else 0,
                           n_relations=knowledge[3] if knowledge else 0, sources=sources,
                           **{k: v for k, v in options.items() if k not in ("n_items", "dim", "dense", "sources")})
    encoder = MultimodalItemEncoder(config)
    for name, (feats, present) in dense.items():
        encoder.set_dense(name, feats, present)
    if knowledge:
        encoder.set_knowledge(knowledge[0], knowledge[1])
    return encoder


def item_encoder_from_state(state: dict) -> nn.Module | None:
    """The (empty-buffer) encoder a checkpoint dict describes under ``item_encoder``; None for id-only.
    ``load_state_dict`` then fills its weights and data buffers."""
    spec = state.get("item_encoder")
    if not spec:
        return None
    if spec.get("kind") != "multimodal":
        raise ValueError(f"unknown item encoder {spec.get('kind')!r}")
    return MultimodalItemEncoder(EncoderConfig.from_dict(spec["config"]))


@torch.no_grad()
def freeze_item_encoder(net: nn.Module) -> nn.Module:
    """Replace ``net.item_encoder`` by an :class:`ItemEmbedding` holding its inference table (in place).

    At inference the fused table is a constant, so the frozen network scores exactly like the original
    and exports to ONNX through the id-only path."""
    encoder = net.item_encoder
    if isinstance(encoder, ItemEmbedding):
        return net
    was_training = encoder.training
    encoder.eval()
    table = encoder.table().detach().clone()
    encoder.train(was_training)
    frozen = ItemEmbedding(table.shape[0] - 1, table.shape[1]).to(table.device)
    frozen.weight.weight.copy_(table)
    net.item_encoder = frozen
    return net
