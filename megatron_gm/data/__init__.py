"""Data: jsonl input, tokenizers, Megatron indexed datasets and their sidecar metadata, and the formats
every phase reads: the selection artifact (``selection.py``), the reference set and evaluation prompts
(``reference.py``), pool documents decoded back to text (``documents.py``)."""
