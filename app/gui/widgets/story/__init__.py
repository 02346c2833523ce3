"""The story panel's widgets: thin views over :class:`app.gui.adapters.story.StoryAdapter`. GUI thread."""
