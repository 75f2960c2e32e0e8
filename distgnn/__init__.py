"""distgnn: GNN recommenders (multi-head GAT link prediction) on partitioned interaction graphs."""
import os as _os

# DGL prints a warning on every import unless a backend is chosen; distgnn is PyTorch-only.
_os.environ.setdefault("DGLBACKEND", "pytorch")

__version__ = "0.1.0"
