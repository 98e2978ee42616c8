"""Dtypes named once on the Python side (the C++ twin is csrc/dtypes.h)."""
import numpy as np

COUNT_DTYPE = np.uint64          # histogram counts
ACCEPTED_DTYPES = (np.float32, np.float16)  # what TensorStats.update takes without a copy
