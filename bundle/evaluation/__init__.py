"""Evaluation against baselines, as the low-dose CT literature reports it.

``methods``, ``baselines``, ``redcnn``: the rows compared; ``evaluate``: the run; ``report``: its
files. The measures themselves are :mod:`bundle.metrics`.
"""
