"""megatron-gm: Group-MATES data selection for Megatron-LM pretraining."""

__version__ = "0.1.0"
