"""The four agents of a turn, one module each: Preprocessor, Strategist, Writer, Dreamer.

Each module owns its JSON schema (structured stages bound every list and string, so a small
model cannot loop inside the JSON), its defaults (temperature, max tokens) and the typed output
it builds from the model's answer. The pipeline (:mod:`app.narrates.pipeline`) sequences them.
"""
