"""Luna Narrates engine: Preprocessor → Strategist → Writer → Dreamer over an OpenAI-compatible LLM.

Pure asyncio (no Qt, no torch). :mod:`app.narrates.service` is the entry point both the GUI's
story panel and ``luna story`` (:mod:`app.narrates.cli`) drive; :mod:`app.narrates.store` keeps
sessions in SQLite; :mod:`app.narrates.pipeline` runs one turn; one module per agent under
:mod:`app.narrates.agents`.
"""
