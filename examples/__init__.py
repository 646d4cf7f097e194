"""Extensions built on :mod:`ordermesh.kit`, runnable as they are (docs/extending.md)."""
