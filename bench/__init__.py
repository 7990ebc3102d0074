"""Benchmarks of the plugin: each one measures its subject against a floor taken in the same run.

Run one with ``python -m bench.<name> --profile quick|full`` (``make bench`` runs the quick ones).
Absolute times on a shared 2-core machine move by 10-25 % between runs; the ratios move far less,
which is why every benchmark prints both and checks its target against the floor it measured.
"""
