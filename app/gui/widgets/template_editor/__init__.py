"""The workflow template editor panel and its parts (thin widgets over
:class:`app.gui.adapters.template_editor.TemplateEditorAdapter`). GUI thread."""
