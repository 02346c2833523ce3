"""Luna Narrates Operator application: Narrates engine, ComfyUI layer and (later) the GUI.

Never imports torch or the daemon's model code (checked by the import-linter contracts in
``pyproject.toml``).
"""

__version__ = "0.1.0"
