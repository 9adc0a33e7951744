"""lsutils: loss-landscape convergence in low-dimensional Hessian subspaces."""

__version__ = "0.1.0"
