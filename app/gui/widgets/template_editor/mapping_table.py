"""The injection-point mapping table: one row per parameter, node and input picked from the template.

Columns: parameter, kind, node, input, default, value in the workflow, status. Node and input
are combo boxes filled from the open :class:`app.services.template_editing.TemplateDocument`
(only inputs that hold a value can be picked); defaults are typed in place. The status cell
says what is wrong or worth checking on that row — the map's own problems, the detection's
ambiguities, the last validation's errors — in words that say what to do; the full text is in
its tooltip. Edits go to the document; the table redraws from it. GUI thread; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from app.comfy.templates import LoraChainTarget, LoraStackerTarget
from app.gui.widgets.template_editor import marks
from app.services.template_editing import LocatedIssues, ParamRow, TemplateDocument, value_text

COLUMNS = ("Parameter", "Kind", "Node", "Input", "Default", "Value in workflow", "Status")
NOT_MAPPED = "— not mapped —"
STATUS_LIMIT = 120


def lora_target_text(row: ParamRow, document: TemplateDocument) -> str:
    lora = row.lora
    if isinstance(lora, LoraStackerTarget):
        return f"stacker {document.node_label(lora.node)}, {lora.slots} slots"
    if isinstance(lora, LoraChainTarget):
        if lora.nodes:
            return "fills loaders " + ", ".join(f"#{n}" for n in lora.nodes)
        if lora.model_source:
            return "new loaders after it" + (" (model + CLIP)" if lora.clip_source else " (model only)")
    return NOT_MAPPED


def _short(text: str, limit: int = STATUS_LIMIT) -> str:
    """A status that keeps its row at most two lines high; the whole text is in the tooltip."""
    return text if len(text) <= limit else text[: limit - 1].rstrip(" ,;") + "… (hover for all)"


class MappingTable(QTableWidget):
    """See module docstring. ``edited`` fires after each change to the document."""

    edited = Signal()

    def __init__(self, on_error: Callable[[str], None], parent: QWidget | None = None):
        super().__init__(0, len(COLUMNS), parent)
        self.setObjectName("mappingTable")
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().setVisible(False)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setWordWrap(True)
        header = self.horizontalHeader()
        for column in range(len(COLUMNS) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COLUMNS.index("Status"), QHeaderView.ResizeMode.Stretch)
        for name, width in (
            ("Parameter", 120),
            ("Kind", 60),
            ("Node", 250),
            ("Input", 120),
            ("Default", 130),
            ("Value in workflow", 170),
        ):
            self.setColumnWidth(COLUMNS.index(name), width)
        self._on_error = on_error
        self.document: TemplateDocument | None = None
        self.located = LocatedIssues()
        self._names: list[str] = []
        self._filling = False
        self.itemChanged.connect(self._on_item_changed)

    # --- drawing -----------------------------------------------------------------------------

    def set_document(self, document: TemplateDocument | None) -> None:
        switched = document is not self.document
        self.document = document
        self.located = LocatedIssues()
        self.refresh()
        if switched:
            self.scrollToTop()

    def set_located(self, located: LocatedIssues) -> None:
        self.located = located
        self.refresh()

    def refresh(self) -> None:
        document = self.document
        self._filling = True
        try:
            rows = document.rows if document is not None else []
            self.setRowCount(len(rows))
            self._names = [row.name for row in rows]
            problems: dict[str, list[str]] = {}
            for problem in document.problems() if document is not None else []:
                problems.setdefault(problem.param, []).append(problem.message)
            for index, row in enumerate(rows):
                assert document is not None
                self._fill(index, row, document, problems.get(row.name, []))
        finally:
            self._filling = False
        self.resizeRowsToContents()

    def _item(self, index: int, column: str, text: str, *, editable: bool = False) -> QTableWidgetItem:
        item = QTableWidgetItem(text)
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if editable:
            flags |= Qt.ItemFlag.ItemIsEditable
        item.setFlags(flags)
        self.setItem(index, COLUMNS.index(column), item)
        return item

    def _fill(self, index: int, row: ParamRow, document: TemplateDocument, problems: list[str]) -> None:
        editable = not document.read_only
        name = self._item(index, "Parameter", row.name)
        name.setToolTip(row.description)
        if not row.standard:
            name.setText(f"{row.name} (custom)")
        self._item(index, "Kind", row.kind)
        node_column, input_column = COLUMNS.index("Node"), COLUMNS.index("Input")
        self.removeCellWidget(index, node_column)
        self.removeCellWidget(index, input_column)
        if isinstance(row.lora, LoraStackerTarget):
            self._item(index, "Node", lora_target_text(row, document)).setToolTip(
                "A LoRA stacker is set in the .luna.toml map (see workflows/README.md)"
            )
            self._item(index, "Input", "")
        elif row.kind == "loras":
            self._item(index, "Node", "")
            self._item(index, "Input", lora_target_text(row, document) if row.lora else "").setToolTip(
                "Pick a LoraLoader (its chain is filled) or the model loader (LoRA loaders are inserted after it)"
            )
            self.setCellWidget(index, node_column, self._lora_combo(row, document, editable))
        else:
            self._item(index, "Node", "")
            self._item(index, "Input", "")
            self.setCellWidget(index, node_column, self._node_combo(row, document, editable))
            self.setCellWidget(index, input_column, self._input_combo(row, document, editable))
        self._item(index, "Default", row.default, editable=editable).setToolTip(
            "Used when a render does not set this parameter; empty = keep the workflow's value"
        )
        current = document.current_value(row.name)
        extra = f"  (+{len(row.bindings) - 1} more input)" if len(row.bindings) > 1 else ""
        self._item(index, "Value in workflow", (value_text(current) if current is not None else "") + extra)
        self._status(index, row, problems)

    def _status(self, index: int, row: ParamRow, problems: list[str]) -> None:
        issues = self.located.by_param.get(row.name, ())
        errors = [i for i in issues if i.severity == "error"]
        warnings = [i for i in issues if i.severity != "error"]
        if problems:
            text, colour, back = "✖ " + "; ".join(problems), marks.ERROR_TEXT, marks.ERROR_BACK
        elif errors:
            text = "✖ on the instance: " + "; ".join(i.message for i in errors)
            colour, back = marks.ERROR_TEXT, marks.ERROR_BACK
        elif row.ambiguity:
            text, colour, back = "⚠ check: " + row.ambiguity, marks.WARN_TEXT, marks.WARN_BACK
        elif warnings:
            text, colour, back = (
                "⚠ " + "; ".join(i.message for i in warnings),
                marks.WARN_TEXT,
                marks.WARN_BACK,
            )
        elif not row.mapped:
            text, colour, back = "not mapped (renders keep the workflow's value)", marks.MUTED_TEXT, None
        else:
            text, colour, back = "✔ mapped", marks.OK_TEXT, None
        # Errors are shown whole (they name what to pick instead); notes are kept short.
        item = self._item(index, "Status", text if colour == marks.ERROR_TEXT else _short(text))
        item.setForeground(colour)
        item.setToolTip(text)
        if back is not None:
            for column in range(len(COLUMNS)):
                cell = self.item(index, column)
                if cell is not None:
                    cell.setBackground(back)

    def _node_combo(self, row: ParamRow, document: TemplateDocument, editable: bool) -> QComboBox:
        combo = QComboBox()
        combo.addItem(NOT_MAPPED, None)
        for node_id in document.node_ids():
            combo.addItem(document.node_label(node_id), node_id)
        binding = row.binding
        if binding is not None:
            found = combo.findData(binding.node)
            if found < 0:  # bound to a node the workflow lacks: show it, flagged by the status
                combo.addItem(f"#{binding.node} (missing)", binding.node)
                found = combo.count() - 1
            combo.setCurrentIndex(found)
        combo.setEnabled(editable)
        combo.currentIndexChanged.connect(
            lambda _i, name=row.name, c=combo: self._on_node_picked(name, c.currentData())
        )
        return combo

    def _lora_combo(self, row: ParamRow, document: TemplateDocument, editable: bool) -> QComboBox:
        combo = QComboBox()
        combo.addItem(NOT_MAPPED, None)
        for node_id in document.node_ids():
            combo.addItem(document.node_label(node_id), node_id)
        lora = row.lora
        if isinstance(lora, LoraChainTarget):
            picked = lora.nodes[0] if lora.nodes else (lora.model_source[0] if lora.model_source else None)
            found = combo.findData(picked)
            combo.setCurrentIndex(max(found, 0))
        combo.setEnabled(editable)
        combo.currentIndexChanged.connect(lambda _i, c=combo: self._on_lora_picked(c.currentData()))
        return combo

    def _on_lora_picked(self, node_id: str | None) -> None:
        if self._filling or self.document is None:
            return
        self.document.set_lora_target(node_id)
        self._changed()

    def _input_combo(self, row: ParamRow, document: TemplateDocument, editable: bool) -> QComboBox:
        combo = QComboBox()
        binding = row.binding
        if binding is not None:
            names = document.literal_inputs(binding.node)
            if binding.input not in names:
                names = [binding.input, *names]
            combo.addItems(names)
            combo.setCurrentText(binding.input)
        combo.setEnabled(editable and binding is not None)
        combo.currentTextChanged.connect(lambda text, name=row.name: self._on_input_picked(name, text))
        return combo

    # --- editing -----------------------------------------------------------------------------

    def pick(self, name: str, node_id: str | None, input_name: str | None = None) -> None:
        """Bind ``name`` as the operator would with the two combo boxes (tests and shortcuts)."""
        assert self.document is not None
        self.document.set_binding(name, node_id, input_name or self._first_input(node_id))
        self._changed()

    def _first_input(self, node_id: str | None) -> str | None:
        if node_id is None or self.document is None:
            return None
        names = self.document.literal_inputs(node_id)
        return names[0] if names else None

    def _on_node_picked(self, name: str, node_id: str | None) -> None:
        if self._filling or self.document is None:
            return
        current = self.document.row(name).binding
        keep = (
            current.input
            if current and node_id and current.input in self.document.literal_inputs(node_id)
            else None
        )
        self.pick(name, node_id, keep)

    def _on_input_picked(self, name: str, input_name: str) -> None:
        if self._filling or self.document is None or not input_name:
            return
        binding = self.document.row(name).binding
        if binding is not None and binding.input != input_name:
            self.pick(name, binding.node, input_name)

    def set_default(self, name: str, text: str) -> None:
        assert self.document is not None
        self.document.set_default(name, text)
        self._changed()

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling or self.document is None or item.column() != COLUMNS.index("Default"):
            return
        # Redrawn on the next turn of the loop: the item is still inside its own signal here.
        name, text = self._names[item.row()], item.text()
        QTimer.singleShot(0, lambda: self.set_default(name, text))

    def _changed(self) -> None:
        # An edit makes the last validation stale for the rows it touched; clear it all, so no
        # row shows an error for a mapping that is no longer there.
        self.located = LocatedIssues()
        self.refresh()
        self.edited.emit()

    def show_row(self, name: str) -> None:
        """Scroll to a parameter's row (e.g. the first problem after a draft save); not selected,
        so its red marking stays visible."""
        if name in self._names:
            self.scrollToItem(self.item(self._names.index(name), 0))

    def row_of(self, name: str) -> int:
        return self._names.index(name)

    def status_text(self, name: str) -> str:
        return self.item(self.row_of(name), COLUMNS.index("Status")).text()

    def cell_text(self, name: str, column: str) -> str:
        index, col = self.row_of(name), COLUMNS.index(column)
        widget = self.cellWidget(index, col)
        if isinstance(widget, QComboBox):
            return widget.currentText()
        item = self.item(index, col)
        return item.text() if item is not None else ""

    def remove_selected(self) -> str | None:
        index = self.currentRow()
        if self.document is None or not 0 <= index < len(self._names):
            return None
        name = self._names[index]
        self.document.remove(name)
        self._changed()
        return name

    def on_error(self, text: str) -> None:
        self._on_error(text)
