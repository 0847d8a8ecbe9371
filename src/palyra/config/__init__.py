"""Configuration: the TOML file's models and how it is loaded."""

from palyra.config.load import load_config
from palyra.config.models import ModelConfig, PalyraConfig, ProviderConfig

__all__ = ["ModelConfig", "PalyraConfig", "ProviderConfig", "load_config"]
