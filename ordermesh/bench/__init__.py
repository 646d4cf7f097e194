"""``ordermesh bench``: every hot path measured against raw NATS in the same run.

Absolute numbers drift on shared machines; ratios to a raw baseline measured minutes
earlier on the same server do not, so every case reports one.
"""
