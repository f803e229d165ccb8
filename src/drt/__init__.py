"""drt: dimensionality-reduced training for PyTorch."""

import os

# OpenMP threads that spin while they wait collapse when another job shares the cores (a LeNet-5
# step went from 24 ms to 545 ms beside two busy training processes); sleep instead, unless the user
# chose. Takes effect when drt is imported before torch (the `drt` command always is).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
