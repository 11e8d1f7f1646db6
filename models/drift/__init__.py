"""The drift monitor (issue 8): how far a feature's recent values have moved
from its reference. measures.py compares two samples; windows.py picks the
samples from a stream. Import them as models.drift.measures and
models.drift.windows, with the repository root on sys.path."""
