"""The demo: a simulated fleet (vLLM engines and their GPUs) driven by a model of an LLM server."""
