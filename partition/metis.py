"""METIS 5.2.1 through ctypes: multi-constraint k-way partitioning with vertex and edge weights.

Why this binding (docs/architecture.md D13): DGL's METIS call passes no edge weights and uses
64-bit ids (about 80 bytes per directed edge), and ``pymetis`` hard-codes one balance constraint.
The ``cmeel-metis`` wheel ships METIS 5.2.1 built with 32-bit ``idx_t``/``real_t``; calling
``METIS_PartGraphKway`` directly gives us several constraints *and* edge weights at about half
the memory. The coarse graph of the multilevel path carries both (vertex weights = members'
users/items/degrees, edge weights = number of fine interactions between two clusters), so both
are needed for the coarse cut to equal the fine cut.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from distgnn.errors import UserError

IDX = np.int32          # idx_t of the cmeel-metis build (IDXTYPEWIDTH 32)
IDX_MAX = np.iinfo(np.int32).max
METIS_OK = 1
METIS_NOPTIONS = 40
OPTION_SEED = 9         # METIS_OPTION_SEED in moptions_et
OPTION_NUMBERING = 19
OPTION_NCUTS = 8
OPTION_NITER = 7
OPTION_UFACTOR = 18
# Weights are scaled so that every per-constraint total stays below this: METIS sums weights in
# idx_t (32-bit) internally, and a billion interactions would overflow it.
WEIGHT_TOTAL_CAP = 1 << 29


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    try:
        import cmeel  # noqa: F401  (locates the wheel's prefix)
    except ImportError:
        pass
    prefix = None
    for base in sys.path:
        cand = Path(base) / "cmeel.prefix" / "lib"
        if (cand / "libmetis.so").is_file():
            prefix = cand
            break
    if prefix is None:
        raise UserError("METIS library not found: the 'cmeel-metis' package is missing; "
                        "reinstall distgnn (pip install -e .)")
    # libmetis.so links libGKlib.so without an rpath: load it first, globally.
    ctypes.CDLL(str(prefix / "libGKlib.so"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(prefix / "libmetis.so"))
    ptr = ctypes.c_void_p
    lib.METIS_PartGraphKway.argtypes = [ptr] * 13
    lib.METIS_PartGraphKway.restype = ctypes.c_int
    lib.METIS_SetDefaultOptions.argtypes = [ptr]
    lib.METIS_SetDefaultOptions.restype = ctypes.c_int
    return lib


def scale_weights(w: np.ndarray) -> np.ndarray:
    """Divide each column (constraint) so its total stays under ``WEIGHT_TOTAL_CAP``.

    Balance is about proportions, so scaling a constraint (with ceil, keeping every weight >= 1
    where it was > 0) leaves METIS's problem the same up to rounding.
    """
    w = np.asarray(w, dtype=np.int64)
    out = np.empty(w.shape, dtype=IDX)
    cols = w.reshape(len(w), -1)
    dst = out.reshape(len(w), -1)
    for c in range(cols.shape[1]):
        total = int(cols[:, c].sum())
        div = max(1, -(-total // WEIGHT_TOTAL_CAP))
        dst[:, c] = (cols[:, c] + div - 1) // div if div > 1 else cols[:, c]
    return out


def part_graph_kway(indptr: np.ndarray, indices: np.ndarray, num_parts: int,
                    vwgt: np.ndarray | None = None, adjwgt: np.ndarray | None = None,
                    imbalance: float = 1.03, seed: int = 0, ncuts: int = 1) -> tuple[np.ndarray, int]:
    """METIS_PartGraphKway on a symmetric CSR graph (no self loops); returns (part, edgecut).

    ``vwgt`` is [n] or [n, ncon]; every constraint gets the same ``imbalance`` tolerance. Weight
    columns are scaled to fit 32-bit sums (``scale_weights``). METIS's own messages go to a
    temporary file and are quoted in the error if it fails.
    """
    n = len(indptr) - 1
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    if num_parts == 1:
        return np.zeros(n, dtype=np.int64), 0
    if len(indices) > IDX_MAX:
        raise UserError(f"the graph given to METIS has {len(indices):,} directed edges, more than "
                        f"METIS's 32-bit ids allow; use --metis-path multilevel")
    xadj = np.ascontiguousarray(indptr, dtype=IDX)
    adjncy = np.ascontiguousarray(indices, dtype=IDX)
    ncon = 1 if vwgt is None or vwgt.ndim == 1 else vwgt.shape[1]
    vw = None if vwgt is None else np.ascontiguousarray(scale_weights(vwgt))
    if vw is not None:
        vw = np.maximum(vw, 0)
        # METIS rejects a constraint whose total is zero (e.g. no items in a tiny graph).
        flat = vw.reshape(n, ncon)
        keep = flat.sum(axis=0) > 0
        if not keep.all():
            flat = np.ascontiguousarray(flat[:, keep])
            ncon = int(keep.sum())
            vw = flat if ncon > 0 else None
    aw = None if adjwgt is None else np.ascontiguousarray(scale_weights(adjwgt).ravel())
    if aw is not None:
        aw = np.maximum(aw, 1).astype(IDX)
    ubvec = np.full(max(ncon, 1), imbalance, dtype=np.float32)
    options = np.full(METIS_NOPTIONS, -1, dtype=IDX)
    lib = _lib()
    lib.METIS_SetDefaultOptions(options.ctypes.data)
    options[OPTION_SEED] = seed
    options[OPTION_NUMBERING] = 0
    options[OPTION_NCUTS] = ncuts   # best of several METIS runs: cheap on a coarse graph
    nvtxs = np.array([n], dtype=IDX)
    ncon_a = np.array([max(ncon, 1)], dtype=IDX)
    nparts = np.array([num_parts], dtype=IDX)
    objval = np.zeros(1, dtype=IDX)
    part = np.zeros(n, dtype=IDX)

    def p(a):
        return None if a is None else a.ctypes.data

    with _native_output_to_file() as log:
        ret = lib.METIS_PartGraphKway(p(nvtxs), p(ncon_a), p(xadj), p(adjncy), p(vw), None, p(aw),
                                      p(nparts), None, p(ubvec), p(options), p(objval), p(part))
    if ret != METIS_OK:
        log_text = log[0].strip()[-300:]
        what = {-2: "bad input", -3: "out of memory", -4: "an internal error"}.get(ret, f"code {ret}")
        raise UserError(f"METIS failed with {what} on {n:,} nodes into {num_parts} parts"
                        f"{' (' + log_text + ')' if log_text else ''}; try fewer parts, a larger "
                        f"--memory-limit, or --method random")
    return part.astype(np.int64), int(objval[0])


@contextlib.contextmanager
def _native_output_to_file():
    """Send fd 1/2 (METIS prints to stdout) to a temp file during the call; keep the text."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    holder = [""]
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield holder
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            f.seek(0)
            holder[0] = f.read()
