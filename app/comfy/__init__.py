"""ComfyUI layer: async client, workflow templates with injection points, style router.

Pure asyncio, no Qt: the GUI reaches it through adapters.
"""
