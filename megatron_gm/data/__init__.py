"""Data: jsonl input, tokenizers, Megatron indexed datasets and their sidecar metadata."""
