"""Quality filters: baselines that rank pool documents without an influence model.

- ``fasttext_filter.py``  DCLM-style fastText classifier (reference text vs random pool documents),
  written as a pool-scores folder that ``tools/select_data.py --scores-from`` reads
- ``cli.py``              ``tools/quality_filter.py``
"""
