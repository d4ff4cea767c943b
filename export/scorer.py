"""The online scorer: an igrec artefact served by onnxruntime (numpy + onnxruntime + stdlib; never torch).

``Scorer(folder)`` verifies the artefact (card, checksums, ONNX metadata and IO signature against the card),
picks execution providers (TensorRT or CUDA where a GPU is usable, else CPU; or an explicit override),
and scores batches of the numpy session graphs built by :mod:`model.graphs`, the same code training uses.
The ONNX graph computes the top-K inside, so a batch returns ``[B, K]`` arrays, never ``[B, n_items]``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.artefact import (
    ITEMS_FILE,
    METADATA_KEYS,
    MODEL_FILE,
    ArtefactError,
    read_card,
    read_interests,
    read_items,
    verify_card,
)
from export.split import HEAD_METADATA, ITEMS
from model.graphs import SessionGraphs, build_history_graphs, build_session_graphs

__all__ = ["ArtefactError", "Scorer", "resolve_providers"]

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
HEAD_ROWS = 32
"""The CPU head (:class:`_Split`) runs in row slices of at most this many sessions. Each slice reads the
item table once, but its ``[rows, n_items]`` intermediates (product, block maxima, normaliser: about six
passes) stay near the core's 2 MB L2 instead of streaming through memory: on the 2-vCPU Xeon of
docs/results.md, Diginetica's head costs 155 us per session at 256 rows in one run, 98-104 us in slices of
24-32, and 700 us per run of one row (the table read)."""
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}


def _gpu_present() -> bool:
    """Whether an NVIDIA device node exists; avoids onnxruntime's CUDA load errors on CPU-only hosts."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of pip's ``nvidia-*`` packages where they are installed, so the CUDA
    provider finds them without ``LD_LIBRARY_PATH`` (onnxruntime's ``preload_dlls``; harmless where CUDA is
    installed system-wide or a torch import already loaded them). What it prints goes to the log, not to
    stdout, which carries the worker's structured logs. Once per process: later Scorers find them loaded."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except (OSError, RuntimeError) as exc:
        printed.write(str(exc))
    if printed.getvalue().strip():
        log.warning("onnxruntime.preload_dlls: %s", " | ".join(printed.getvalue().split("\n")).strip(" |"))


def resolve_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """Execution providers to request, best first, always ending with the CPU provider.

    ``"auto"``: TensorRT then CUDA when this onnxruntime build has them and a GPU device exists, else CPU.
    Otherwise a name (``"cpu"``, ``"cuda"``, ``"tensorrt"`` or an onnxruntime provider name) or a list of
    them; a requested provider missing from this build is a :class:`ValueError`.
    """
    available = ort.get_available_providers()
    if isinstance(providers, str) and providers == "auto":
        gpu = [p for p in GPU_PROVIDERS if p in available] if _gpu_present() else []
        return [*gpu, CPU]
    names = [providers] if isinstance(providers, str) else list(providers)
    if not names:
        raise ValueError("empty provider list")
    wanted = [ALIASES.get(n.lower(), n) for n in names]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ValueError(f"providers {missing} are not in this onnxruntime build (available: {available})")
    if TENSORRT in wanted and CUDA not in wanted:
        wanted.insert(wanted.index(TENSORRT) + 1, CUDA)
    return [*wanted, CPU] if CPU not in wanted else wanted


class Scorer:
    """Top-K next-item scoring with an exported artefact.

    Attributes:
        card: the model card (card.json).
        k: top-K baked into the graph.
        n_items: largest item index (indices 1..n_items are items, 0 is padding).
        providers: the execution providers the session really uses, best first.
        has_history_inputs: whether the graph has the historical-graph inputs.
        uses_history: whether ``recommend`` feeds the given histories to them (see ``history`` below).
    """

    def __init__(self, artefact: str | Path, providers: str | list[str] = "auto", threads: int | None = None,
                 fp16: bool = False, *, int8: bool = False, history: bool | None = None, max_batch: int = 256,
                 spin: bool = True,
                 bucket: bool = True, trt_cache: str | Path | None = None):
        """Load and verify ``artefact``; raise :class:`ArtefactError` if it is corrupted or incompatible.

        Args:
            providers: ``"auto"``, a provider name/alias or a list (see :func:`resolve_providers`). An explicit
                GPU request that onnxruntime cannot honour is an error, never a silent CPU fallback.
            threads: intra-op threads for the CPU provider (None: onnxruntime's default, one per core).
            fp16: half precision on GPU (TensorRT: builder flag; CUDA: the item product in float16, see
                :func:`export.precision.fp16_model`). Ignored with a warning on CPU.
            int8: the item product in int8 on CPU, its top candidates scored again exactly (see
                :func:`export.precision.int8_model`): the same top-K set, near-ties aside. On Diginetica
                (docs/results.md, 2026-12-04 17:36) about 30 % less time at batch 1, none at 32 and up to
                10 % more at 256 on a 2-core Xeon: the product is cheaper, its row scales and 64 candidates
                cost more. With narrower item embeddings it loses (D = 32: slower at batch 16 and 64,
                docs/export.md). Ignored with a warning on GPU.
            history: feed users' histories to the history inputs. None follows the card's
                ``graphs.history_trained``: a network trained without histories (every split dataset so far)
                has untrained history weights, so real histories would only add noise; it then scores every
                session as training did, with an empty history.
            max_batch: largest batch of the TensorRT optimisation profile.
            spin: let idle CPU threads spin between runs (lower latency, but burns the cores the worker
                shares; turn off when the worker's other work is CPU-bound).
            bucket: score a mixed batch in sub-batches of similar graph size (see :func:`size_buckets`):
                same results, far less padding work. On the CPU provider the graph's network part then runs
                per sub-batch and its item head once per call (:mod:`export.split`; 8-21 % less time per
                session at 16-256 sessions on Diginetica, for about 0.3 s more to load and twice the
                memory: the whole graph stays loaded for calls of one sub-batch, where it is faster).
            trt_cache: TensorRT engine cache folder (default ``~/.cache/igrec/trt/<model sha256 prefix>``).
        """
        self.path = Path(artefact)
        if not self.path.is_dir():
            raise ArtefactError(f"{self.path}: not a folder")
        self.card = read_card(self.path)
        verify_card(self.card, self.path)
        self.k = int(self.card["k"])
        self.n_items = int(self.card["n_items"])
        ids = read_items(self.path / ITEMS_FILE)
        if len(ids) != self.n_items + 1:
            raise ArtefactError(f"{self.path / ITEMS_FILE}: {len(ids) - 1} items, the card says {self.n_items}")
        self._ids = np.asarray(ids, dtype=str)
        self._index = {ext: i for i, ext in enumerate(ids) if i}
        self._graphs = self.card["graphs"]
        self.interests = read_interests(self.path, self.n_items)
        requested = resolve_providers(providers)
        self._session, self._split = self._open(requested, threads, fp16, int8, max_batch, spin, bucket, trt_cache)
        self.providers = self._session.get_providers()
        self._check_fallback(providers, requested)
        self._check_model()
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.has_history_inputs = "hist_items" in self._input_names
        trained = bool(self._graphs.get("history_trained", False))
        self.uses_history = self.has_history_inputs and (trained if history is None else history)
        self.on_gpu = self.providers[0] in GPU_PROVIDERS
        self.fp16 = bool(fp16) and self.on_gpu
        self.int8 = bool(int8) and not self.on_gpu
        self.bucket = bucket

    def _open(self, requested: list[str], threads: int | None, fp16: bool, int8: bool, max_batch: int, spin: bool,
              bucket: bool, trt_cache: str | Path | None) -> tuple[ort.InferenceSession, _Split | None]:
        """The onnxruntime session with its options (threads, spinning) and per-provider options; and on the
        CPU provider with size buckets, the graph's network and head parts in sessions of their own
        (:mod:`export.split`; None where the graph cannot be cut)."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = int(threads)
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        gpu = requested[0] in GPU_PROVIDERS
        if fp16 and not gpu:
            log.warning("fp16 requested but no GPU provider (%s): scoring in float32", requested[0])
        if int8 and gpu:
            log.warning("int8 requested with a GPU provider (%s): scoring in float32", requested[0])
        if gpu:
            _preload_cuda_libraries()
        model: str | bytes = str(self.path / MODEL_FILE)
        variant = "fp16_model" if fp16 and requested[0] == CUDA else "int8_model" if int8 and not gpu else None
        if variant is not None:
            from export import precision  # imports onnx (0.6 s): only where a variant is built

            model = getattr(precision, variant)(self.path / MODEL_FILE, self.n_items)
        provider_list = [(p, self._provider_options(p, fp16, max_batch, trt_cache)) for p in requested]
        try:
            session = ort.InferenceSession(model, opts, providers=provider_list)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ArtefactError(f"{self.path / MODEL_FILE}: onnxruntime cannot load it: {exc}") from exc
        if gpu or not bucket:
            return session, None
        if not session.get_modelmeta().custom_metadata_map.get(HEAD_METADATA):
            log.info("%s names no item head inputs (a network without one, or exported before they were "
                     "named): each size bucket runs the whole graph", self.path / MODEL_FILE)
            return session, None
        return session, _Split.open(model, opts)

    def _provider_options(self, provider: str, fp16: bool, max_batch: int, trt_cache: str | Path | None) -> dict:
        """Options of one provider. TensorRT gets an optimisation profile covering batch 1..max_batch and
        graphs up to the card's max_len, and an engine cache (engine builds take minutes)."""
        if provider == CUDA:
            return {"device_id": 0, "arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"}
        if provider != TENSORRT:
            return {}
        cache = Path(trt_cache) if trt_cache else (Path.home() / ".cache" / "igrec" / "trt"
                                                   / self.card["files"][MODEL_FILE][:16])
        cache.mkdir(parents=True, exist_ok=True)
        n, h = int(self._graphs["max_len"]), int(self._graphs["history_max_len"])
        dims = {"items": ("B", "N"), "alias": ("B", "N"), "adj": ("B", "N", "2N"), "mask": ("B", "N"),
                "hist_items": ("B", "H"), "hist_adj": ("B", "H", "2H")}
        names = [i["name"] for i in self.card["onnx"]["inputs"]]

        def profile(b: int, nn: int, hh: int) -> str:
            size = {"B": b, "N": nn, "2N": 2 * nn, "H": hh, "2H": 2 * hh}
            return ",".join(f"{x}:" + "x".join(str(size[d]) for d in dims[x]) for x in names if x in dims)

        return {"device_id": 0, "trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache), "trt_profile_min_shapes": profile(1, 1, 1),
                "trt_profile_opt_shapes": profile(max(1, max_batch // 4), max(1, n // 2), max(1, h // 2)),
                "trt_profile_max_shapes": profile(max_batch, n, h)}

    def _check_fallback(self, asked: str | list[str], requested: list[str]) -> None:
        """An explicit provider request that onnxruntime silently dropped is an error; auto just logs."""
        if self.providers[0] == requested[0]:
            return
        if isinstance(asked, str) and asked == "auto":
            log.warning("%s could not be initialised; scoring with %s", requested[0], self.providers[0])
            return
        raise RuntimeError(f"requested {requested[0]} but onnxruntime initialised {self.providers} "
                           "(GPU driver, CUDA/cuDNN or TensorRT libraries missing?)")

    def _check_model(self) -> None:
        """The ONNX model must be the one the card describes: metadata and IO signature."""
        where = self.path / MODEL_FILE
        meta = self._session.get_modelmeta().custom_metadata_map
        expected = {"igrec.format_version": self.card["format_version"], "igrec.k": self.k,
                    "igrec.n_items": self.n_items, "igrec.opset": self.card["onnx"]["opset"]}
        for key in METADATA_KEYS:
            if meta.get(key) != str(expected[key]):
                raise ArtefactError(f"{where}: metadata {key}={meta.get(key)!r} but the card says {expected[key]!r}")
        for kind, actual in (("inputs", self._session.get_inputs()), ("outputs", self._session.get_outputs())):
            declared = [(d["name"], d["dtype"]) for d in self.card["onnx"][kind]]
            got = [(a.name, a.type.removeprefix("tensor(").removesuffix(")")) for a in actual]
            if got != declared:
                raise ArtefactError(f"{where}: {kind} {got} differ from the card's {declared}")
        for out in self._session.get_outputs():
            if out.shape[-1] != self.k:
                raise ArtefactError(f"{where}: output {out.name} has K={out.shape[-1]}, the card says {self.k}")

    def index_of(self, external_ids: Sequence[str]) -> np.ndarray:
        """int64 ``[len(external_ids)]`` item indices; 0 (padding) for ids the model has never seen."""
        get = self._index.get
        return np.fromiter((get(str(e), 0) for e in external_ids), dtype=np.int64, count=len(external_ids))

    def interest_weights(self, sessions: Sequence[np.ndarray]) -> np.ndarray | None:
        """float32 ``[len(sessions), k]``: per session (item indices, at least one), the mean interest
        assignment of its items, so that each row sums to 1; one pass for the whole batch, not a numpy
        call per session. None when the artefact has no interest table."""
        if self.interests is None:
            return None
        lengths = np.fromiter(map(len, sessions), dtype=np.int64, count=len(sessions))
        if not lengths.all():
            raise ValueError("interest_weights: every session needs at least one item")
        if not len(sessions):
            return np.zeros((0, self.interests.shape[1]), np.float32)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        rows = self.interests[np.concatenate(sessions).astype(np.int64, copy=False)]
        return np.add.reduceat(rows, starts, axis=0) / lengths[:, None].astype(np.float32)

    def external_ids(self, indices: np.ndarray) -> np.ndarray:
        """External ids (numpy str array, same shape as ``indices``); index 0 maps to ``""``."""
        return self._ids[np.asarray(indices, dtype=np.int64)]

    def recommend(self, graphs: SessionGraphs, history: SessionGraphs | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-K of a batch of session graphs.

        Args:
            graphs: current sessions, ``items [B, N]``, ``alias [B, L]``, ``adj [B, N, 2N]``, ``mask [B, L]``
                (:func:`model.graphs.build_session_graphs`), item indices in 0..n_items.
            history: the users' historical graphs (:func:`model.graphs.build_history_graphs`), ``B`` rows, or
                None (no history). Ignored unless :attr:`uses_history`.

        Returns:
            item indices int64 ``[B, K]`` and their log-probabilities float32 ``[B, K]``, best first.
        """
        b = graphs.batch_size
        if b == 0:
            return np.zeros((0, self.k), np.int64), np.zeros((0, self.k), np.float32)
        if history is not None and history.batch_size != b:
            raise ValueError(f"history has {history.batch_size} rows, graphs have {b}")
        if not self.uses_history:
            history = None
        groups = size_buckets(graphs) if self.bucket else [np.arange(b)]
        if self._split is not None and (len(groups) > 1 or b > HEAD_ROWS):
            return self._split.run([self._feeds(trim_graphs(graphs, rows), trim_graphs(history, rows)
                                                if history is not None else None) for rows in groups],
                                   groups, self._output_names)
        if len(groups) == 1:
            return self._run(self._feeds(graphs, history))
        top_items = np.empty((b, self.k), np.int64)
        top_scores = np.empty((b, self.k), np.float32)
        for rows in groups:
            sub_history = trim_graphs(history, rows) if history is not None else None
            top_items[rows], top_scores[rows] = self._run(self._feeds(trim_graphs(graphs, rows), sub_history))
        return top_items, top_scores

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.on_gpu:
            return self._run_bound(feeds)
        top_items, top_scores = self._session.run(self._output_names, feeds)
        return top_items, top_scores

    def recommend_sessions(self, sessions: Sequence[Sequence[int]],
                           histories: Sequence[Sequence[Sequence[int]]] | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Top-K of raw click sequences (item indices), graphs built exactly as in training (the card's
        ``max_len`` and edge weighting); ``histories``: per session, the user's earlier sessions."""
        binary = bool(self._graphs.get("binary", False))
        graphs = build_session_graphs(sessions, self._graphs["max_len"], binary=binary)
        history = None
        if histories is not None and self.uses_history:
            history = build_history_graphs(histories, self._graphs["history_max_len"], binary=binary)
        return self.recommend(graphs, history)

    def _feeds(self, graphs: SessionGraphs, history: SessionGraphs | None) -> dict[str, np.ndarray]:
        """Input name -> contiguous array of the dtype the graph declares; validates item index ranges."""
        b = graphs.batch_size
        arrays = {"items": graphs.items, "alias": graphs.alias, "adj": graphs.adj, "mask": graphs.mask}
        if self.has_history_inputs:
            if history is None:
                arrays["hist_items"] = np.zeros((b, 1), np.int64)
                arrays["hist_adj"] = np.zeros((b, 1, 2), np.float32)
            else:
                arrays["hist_items"], arrays["hist_adj"] = history.items, history.adj
        for name in ("items", "hist_items"):
            if name in arrays and arrays[name].size:
                lo, hi = int(arrays[name].min()), int(arrays[name].max())
                if lo < 0 or hi > self.n_items:
                    raise ValueError(f"{name} has item indices in [{lo}, {hi}], outside 0..{self.n_items} "
                                     "(map external ids with index_of first)")
        dtypes = {"items": np.int64, "alias": np.int64, "hist_items": np.int64}
        return {name: np.ascontiguousarray(arrays[name], dtype=dtypes.get(name, np.float32))
                for name in self._input_names}

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """GPU run through IO binding: inputs copied once to the device, outputs allocated there and
        copied back once ([B, K], small), no intermediate host buffers."""
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self._output_names:
            binding.bind_output(name, "cuda", 0)
        self._session.run_with_iobinding(binding)
        top_items, top_scores = binding.copy_outputs_to_cpu()
        return top_items, top_scores

    def __repr__(self) -> str:
        return (f"Scorer({str(self.path)!r}, k={self.k}, n_items={self.n_items}, providers={self.providers}, "
                f"history={self.uses_history})")


class _Split:
    """The graph's network part and its item head in two onnxruntime sessions (:mod:`export.split`): the
    network runs once per size bucket, the head over all of a call's rows (in slices of :data:`HEAD_ROWS`),
    its ``[batch, width]`` inputs padded with zeros to the widest bucket (padding that
    :meth:`model.network.IGRec.head` ignores)."""

    def __init__(self, network: ort.InferenceSession, head: ort.InferenceSession):
        self.network = network
        self.head = head
        self.cut = [o.name for o in network.get_outputs()]

    @classmethod
    def open(cls, model: str | bytes, opts: ort.SessionOptions) -> _Split | None:
        import onnx  # 0.6 s to import: only where a graph is cut

        from export.split import split_at_head

        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
        parts = split_at_head(proto)
        try:
            if parts is not None:
                return cls(*(ort.InferenceSession(part, opts, providers=["CPUExecutionProvider"]) for part in parts))
            reason = "its head reads more than the named head inputs"
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            reason = f"onnxruntime cannot load a part: {exc}"
        log.warning("the graph is not cut at its head inputs (%s): each size bucket runs the whole graph", reason)
        return None

    def run(self, feeds: list[dict[str, np.ndarray]], groups: list[np.ndarray],
            outputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Top-K of the rows ``groups`` (indices into the call's batch), ``feeds`` the graph inputs of each."""
        parts = [self.network.run(self.cut, f) for f in feeds]
        head_feeds = {ITEMS: _stack_padded([f[ITEMS] for f in feeds])}
        head_feeds |= {name: _stack_padded([p[j] for p in parts]) for j, name in enumerate(self.cut)}
        top_items, top_scores = self._head(outputs, head_feeds)
        order = np.concatenate(groups)
        items, scores = np.empty_like(top_items), np.empty_like(top_scores)
        items[order], scores[order] = top_items, top_scores
        return items, scores

    def _head(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The head over all rows of ``feeds``, run in near-equal row slices of at most :data:`HEAD_ROWS`."""
        runs = [self.head.run(outputs, {name: value[a:z] for name, value in feeds.items()})
                for a, z in row_slices(len(feeds[ITEMS]))]
        return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])


def row_slices(rows: int, most: int = HEAD_ROWS) -> list[tuple[int, int]]:
    """(start, stop) of the fewest near-equal slices of ``rows`` rows with at most ``most`` rows each."""
    n = max(1, -(-rows // most))
    return list(itertools.pairwise(rows * i // n for i in range(n + 1)))


def _stack_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """``[rows, width]`` arrays stacked row-wise, each padded with zeros on the right to the widest."""
    width = max(a.shape[1] for a in arrays)
    out = np.zeros((sum(a.shape[0] for a in arrays), width), arrays[0].dtype)
    row = 0
    for a in arrays:
        out[row : row + a.shape[0], : a.shape[1]] = a
        row += a.shape[0]
    return out


def size_buckets(graphs: SessionGraphs, min_rows: int = 8) -> list[np.ndarray]:
    """Row indices of ``graphs`` grouped by node count in power-of-two ranges (1, 2, 3-4, 5-8, ...).

    A padded batch costs its largest graph for every row: on Diginetica test prefixes a random batch of 256
    pads ~3.3 nodes per session to ~19. Groups of fewer than ``min_rows`` rows join the next larger range
    (a run has a fixed overhead); a batch of fewer than ``2 * min_rows`` rows stays whole.
    """
    b = graphs.batch_size
    if b < 2 * min_rows:
        return [np.arange(b)]
    nodes = np.count_nonzero(graphs.items, axis=1)
    level = np.ceil(np.log2(np.maximum(nodes, 1))).astype(np.int64)
    groups: list[np.ndarray] = []
    pending = np.zeros(0, np.int64)
    top = int(level.max())
    for lv in np.unique(level):
        rows = np.concatenate([pending, np.flatnonzero(level == lv)])
        if len(rows) < min_rows and lv != top:
            pending = rows
            continue
        groups.append(rows)
        pending = np.zeros(0, np.int64)
    return groups


def trim_graphs(graphs: SessionGraphs, rows: np.ndarray) -> SessionGraphs:
    """The graphs of ``rows`` with the node and click axes cut to those rows' largest graph.

    Padding nodes have no edges and padding clicks are masked, so the network's output for a row does not
    depend on how much padding it carries; only the work does. (History rows may hold 0 separators
    between sessions, so the click axis is cut after the last click, not at the click count.)
    """
    items = graphs.items[rows]
    width = graphs.items.shape[1]
    n = max(1, int(np.count_nonzero(items, axis=1).max(initial=0)))
    mask = graphs.mask[rows]
    used = np.flatnonzero(mask.any(0))
    length = int(used[-1]) + 1 if used.size else 1
    adj = graphs.adj[rows, :n]
    return SessionGraphs(items=items[:, :n], alias=graphs.alias[rows, :length],
                         adj=np.concatenate([adj[:, :, :n], adj[:, :, width : width + n]], axis=2),
                         mask=mask[:, :length])
