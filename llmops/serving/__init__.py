"""Serving a GGUF: llama.cpp's converter (converter.py), the Ollama Modelfile (modelfile.py) and
the OpenAI-compatible llama.cpp server (`python -m llmops.serving.llama_cpp_runtime`)."""
