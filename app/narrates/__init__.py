"""The Narrates engine: agents over an OpenAI-compatible LLM (``app.narrates.llm``), sessions, scenes."""
