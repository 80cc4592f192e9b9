"""The engine side: profile → LLMConfig, placement, the vLLM engine and the shared fake."""
