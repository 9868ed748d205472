"""Residency policies: POLAR, POLAR+, and the LRU/LFU/static/oracle baselines."""
