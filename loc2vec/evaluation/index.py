"""Similarity search over embeddings, checked against exact search.

Two index types: ``build_hnsw`` (faiss HNSW, ids are row positions; it cannot remove vectors) and
``build_ivf`` (faiss IVF-Flat keyed by point id, with a hash-table direct map), which ``update_ivf`` changes
in place, removing and adding ids, so that an OSM diff updates the index instead of rebuilding it. An IVF
index's ``nprobe`` is the smallest that reaches a target recall@10 against exact search when built; after an
update the recall is measured again (the centroids stay those of the build), and a caller rebuilds when it
fell below its floor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from loc2vec.io import atomic_path


@dataclass(frozen=True)
class IndexReport:
    n_vectors: int
    dim: int
    recall_at_10: float
    exact_ms_per_query: float
    hnsw_ms_per_query: float
    build_seconds: float


def build_hnsw(vectors: np.ndarray, m: int = 32, ef_construction: int = 200, ef_search: int = 64) -> faiss.Index:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexHNSWFlat(vectors.shape[1], m)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    index.add(vectors)
    return index


def measure(
    index: faiss.Index,
    vectors: np.ndarray,
    n_queries: int = 500,
    k: int = 10,
    seed: int = 0,
    build_seconds: float = float("nan"),
    ids: np.ndarray | None = None,
) -> IndexReport:
    """Recall@k of ``index`` against exact L2 search, and per-query latency of both (single queries);
    ``build_seconds`` is what building ``index`` took, when the caller timed it. ``ids``: the id of each row
    of ``vectors`` in ``index`` (default: the row positions)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    row_ids = np.arange(len(vectors)) if ids is None else np.asarray(ids, dtype=np.int64)
    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), min(n_queries, len(vectors)), replace=False)]
    k = min(k, len(vectors))
    timings = {}
    results = {}
    for name, idx in (("exact", exact), ("hnsw", index)):
        started = time.perf_counter()
        found = [idx.search(q[None, :], k)[1][0] for q in queries]
        timings[name] = (time.perf_counter() - started) * 1000 / len(queries)
        results[name] = np.stack(found) if name != "exact" else row_ids[np.stack(found)]
    hits = [len(set(a) & set(b)) / k for a, b in zip(results["exact"], results["hnsw"], strict=True)]
    recall = float(np.mean(hits))
    return IndexReport(len(vectors), vectors.shape[1], recall, timings["exact"], timings["hnsw"], build_seconds)


def save_index(index: faiss.Index, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(path)


def load_index(path: str | Path) -> faiss.Index:
    return faiss.read_index(str(path))


def _recall(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    truth = ids[exact.search(queries, k)[1]]
    found = index.search(queries, k)[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, found, strict=True)]))


def build_ivf(
    vectors: np.ndarray, ids: np.ndarray, target_recall: float = 0.95, k: int = 10, seed: int = 0
) -> faiss.IndexIVFFlat:
    """An IVF-Flat index of ``vectors`` under ``ids`` (int64), √n lists trained by seeded k-means, and the
    smallest power-of-two ``nprobe`` whose recall@k against exact search reaches ``target_recall`` on a
    seeded sample of queries."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    nlist = max(1, int(np.sqrt(len(vectors))))
    index = faiss.index_factory(vectors.shape[1], f"IVF{nlist},Flat")
    index.cp.seed = seed
    index.train(vectors)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    index.add_with_ids(vectors, ids)
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), min(200, len(vectors)), replace=False)]
    k = min(k, len(vectors))
    index.nprobe = nlist
    for nprobe in [p for p in (1, 2, 4, 8, 16, 32, 64, 128) if p < nlist] + [nlist]:
        index.nprobe = nprobe
        if _recall(index, vectors, ids, queries, k) >= target_recall:
            break
    return index


def update_ivf(index: faiss.Index, remove: np.ndarray, add_ids: np.ndarray, add_vectors: np.ndarray) -> int:
    """Remove ``remove`` and (re)insert ``add_ids`` with ``add_vectors``, in place; returns how many were removed.
    An id in both is replaced."""
    gone = np.unique(np.concatenate([np.asarray(remove, np.int64), np.asarray(add_ids, np.int64)]))
    removed = int(index.remove_ids(faiss.IDSelectorArray(len(gone), faiss.swig_ptr(gone)))) if len(gone) else 0
    if len(add_ids):
        index.add_with_ids(np.ascontiguousarray(add_vectors, dtype=np.float32), np.asarray(add_ids, np.int64))
    return removed
