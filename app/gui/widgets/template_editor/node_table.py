"""The node table of the open template: id, class type, title and inputs of every node.

A tree: one row per node (``#3  KSampler  'KSampler'``), one child row per input. A literal
input's value is edited in place (typed as the value it replaces: a number stays a number);
a link reads ``→ #4 Load Checkpoint [output 1]`` and is not editable. The parameters bound to
an input are named beside it, and the last validation's errors are shown on the node and the
input they concern. Edits go to :class:`app.services.template_editing.TemplateDocument`.
GUI thread; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QHeaderView, QTreeWidget, QTreeWidgetItem, QWidget

from app.gui.widgets.template_editor import marks
from app.services.template_editing import DocumentError, LocatedIssues, TemplateDocument

COLUMNS = ("Node / input", "Class type / value", "Title / parameters", "Validation")
NODE_ROLE = Qt.ItemDataRole.UserRole
INPUT_ROLE = Qt.ItemDataRole.UserRole + 1


class NodeTable(QTreeWidget):
    """See module docstring. ``edited`` fires after a value was changed."""

    edited = Signal()

    def __init__(self, on_error: Callable[[str], None], parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("nodeTable")
        self.setColumnCount(len(COLUMNS))
        self.setHeaderLabels(COLUMNS)
        self.setAlternatingRowColors(True)
        header = self.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for column, width in enumerate((170, 330, 220)):
            self.setColumnWidth(column, width)
        self._on_error = on_error
        self.document: TemplateDocument | None = None
        self.located = LocatedIssues()
        self._filling = False
        self.itemChanged.connect(self._on_item_changed)

    def set_document(self, document: TemplateDocument | None) -> None:
        self.document = document
        self.located = LocatedIssues()
        self.refresh()

    def set_located(self, located: LocatedIssues) -> None:
        self.located = located
        self.refresh()

    def refresh(self) -> None:
        expanded = {
            self.topLevelItem(i).data(0, NODE_ROLE)
            for i in range(self.topLevelItemCount())
            if self.topLevelItem(i).isExpanded()
        }
        self._filling = True
        try:
            self.clear()
            if self.document is None:
                return
            for node in self.document.nodes():
                self._add_node(node, node.node_id in expanded or not expanded)
        finally:
            self._filling = False

    def _add_node(self, node, expand: bool) -> None:
        assert self.document is not None
        issues = self.located.by_node.get(node.node_id, ())
        top = QTreeWidgetItem([f"#{node.node_id}", node.class_type, node.title, ""])
        top.setData(0, NODE_ROLE, node.node_id)
        font = top.font(0)
        font.setBold(True)
        for column in range(3):
            top.setFont(column, font)
        node_level = [i for i in issues if i.input_name is None]
        if node_level:
            self._mark(top, "; ".join(i.message for i in node_level), node_level[0].severity)
        self.addTopLevelItem(top)
        editable = not self.document.read_only
        for cell in node.inputs:
            params = self.document.params_at(node.node_id, cell.name)
            child = QTreeWidgetItem([cell.name, cell.display(), ", ".join(params), ""])
            child.setData(0, NODE_ROLE, node.node_id)
            child.setData(0, INPUT_ROLE, cell.name)
            flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
            if cell.is_link:
                child.setForeground(1, marks.LINK_TEXT)
                child.setToolTip(1, f"linked from node #{cell.source}; edit that node's values")
            elif editable:
                flags |= Qt.ItemFlag.ItemIsEditable
                child.setToolTip(1, "double-click to edit")
            child.setFlags(flags)
            if params:
                child.setForeground(2, marks.OK_TEXT)
            input_issues = [i for i in issues if i.input_name == cell.name]
            if input_issues:
                self._mark(child, "; ".join(i.message for i in input_issues), input_issues[0].severity)
            top.addChild(child)
        top.setExpanded(expand)

    @staticmethod
    def _mark(item: QTreeWidgetItem, text: str, severity: str) -> None:
        item.setText(3, ("✖ " if severity == "error" else "⚠ ") + text)
        item.setToolTip(3, text)
        colour, back = (
            (marks.ERROR_TEXT, marks.ERROR_BACK)
            if severity == "error"
            else (marks.WARN_TEXT, marks.WARN_BACK)
        )
        for column in range(len(COLUMNS)):
            item.setBackground(column, back)
        item.setForeground(3, colour)

    def edit_value(self, node_id: str, input_name: str, text: str) -> bool:
        """Set a literal input as if typed into its cell; False (and a message) when refused."""
        assert self.document is not None
        try:
            self.document.set_input_value(node_id, input_name, text)
        except DocumentError as exc:
            self._on_error(f"#{node_id} {input_name}: {exc}")
            self.refresh()
            return False
        self.refresh()
        self.edited.emit()
        return True

    def _on_item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        if self._filling or column != 1 or item.data(0, INPUT_ROLE) is None:
            return
        # The tree is rebuilt after the edit, but not inside the item's own signal.
        assert self.document is not None
        node_id, input_name = item.data(0, NODE_ROLE), item.data(0, INPUT_ROLE)
        try:
            self.document.set_input_value(node_id, input_name, item.text(1))
        except DocumentError as exc:
            self._on_error(f"#{node_id} {input_name}: {exc}")
        else:
            self.edited.emit()
        QTimer.singleShot(0, self.refresh)

    def input_item(self, node_id: str, input_name: str) -> QTreeWidgetItem | None:
        for i in range(self.topLevelItemCount()):
            top = self.topLevelItem(i)
            if top.data(0, NODE_ROLE) != node_id:
                continue
            for j in range(top.childCount()):
                if top.child(j).data(0, INPUT_ROLE) == input_name:
                    return top.child(j)
        return None
