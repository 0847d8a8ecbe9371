"""Palyra: an LLM gateway that speaks the OpenAI API in front of many model providers."""

__version__ = "0.1.0"
