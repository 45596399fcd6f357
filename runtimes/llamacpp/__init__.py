"""llama.cpp runtime for the LLM stage (GGUF), through llama-cpp-python's C API bindings."""

from edgebridge.runtimes.llamacpp.llm import LlamaCppLLM, LlamaSettings

__all__ = ["LlamaCppLLM", "LlamaSettings"]
