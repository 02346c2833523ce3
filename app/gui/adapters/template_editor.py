"""Qt adapter of the template editor: the library, the open document, validation, test renders.

Owns one :class:`app.services.template_library.TemplateLibrary` and the open
:class:`app.services.template_editing.TemplateDocument`; reaches ComfyUI only through the
app's :class:`app.comfy.router.StyleRouter` (``/object_info`` of a chosen instance, for UI
conversion and validation) and the real :class:`app.comfy.render.RenderService` (test
renders). The router comes from a callable because the settings dialog may replace it.
Coroutines run on the qasync loop in a :class:`~app.gui.adapters.tasks.TaskSet`; expected
failures become one readable line on the :class:`~app.gui.adapters.messages.MessageHub` and,
where they concern rows, signals the widgets put on those rows. GUI thread.

Signals: ``entries_changed(list[TemplateEntry])``, ``document_changed(TemplateDocument | None)``
(after open / save / import; row edits go straight to the document),
``instances_changed(tuple[tuple[str, str], ...])`` (name, health), ``validation_finished(
ValidationView)``, ``render_started()``, ``render_progress(ProgressView)``,
``render_finished(RenderOutcome)``, ``render_failed(RenderFailure)``, ``busy_changed(str)``,
``import_finished(ImportResult)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.comfy.errors import ComfyError
from app.comfy.graph import node_title
from app.comfy.inject import InjectionError, inject
from app.comfy.render import (
    RenderError,
    RenderExecutionFailed,
    RenderHandle,
    RenderOutcome,
    RenderRequest,
    RenderService,
    default_output_dir,
)
from app.comfy.router import StyleRouter
from app.comfy.validate import ValidationIssue, ValidationReport, validate_workflow
from app.gui.adapters.messages import MessageHub
from app.gui.adapters.tasks import TaskSet
from app.services.instances_monitor import InstanceRow
from app.services.render_progress import RenderProgress
from app.services.template_editing import (
    DocumentError,
    LocatedIssues,
    MapProblem,
    TemplateDocument,
    locate_issues,
    parse_test_values,
)
from app.services.template_library import LibraryError, NeedsObjectInfo, SaveResult, TemplateLibrary

log = logging.getLogger(__name__)

OBJECT_INFO_TIMEOUT = 60.0


@dataclass(frozen=True)
class ValidationView:
    """One validation: against which instance, the report, and its issues sorted onto rows.

    ``problems`` are the map's own problems when it could not even be built (then ``report``
    is empty).
    """

    instance: str
    report: ValidationReport
    located: LocatedIssues
    problems: tuple[MapProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems


class InstanceUnavailable(Exception):
    """The chosen instance's node definitions could not be read; the message says why."""


@dataclass(frozen=True)
class ImportResult:
    """How an import ended: the new document, or the error (nothing was written then)."""

    document: TemplateDocument | None
    error: str = ""


@dataclass(frozen=True)
class RenderFailure:
    """A test render that failed: the one-line message and its issues sorted onto rows."""

    message: str
    located: LocatedIssues


class TemplateEditorAdapter(QObject):
    """See module docstring."""

    entries_changed = Signal(object)
    document_changed = Signal(object)
    instances_changed = Signal(object)
    validation_finished = Signal(object)
    render_started = Signal()
    render_progress = Signal(object)
    render_finished = Signal(object)
    render_failed = Signal(object)
    busy_changed = Signal(str)
    import_finished = Signal(object)

    def __init__(
        self,
        library: TemplateLibrary,
        router: Callable[[], StyleRouter],
        messages: MessageHub,
        *,
        render_output_dir: Path | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.library = library
        self._router = router
        self._messages = messages
        # Test renders are kept apart from the story's renders.
        self._output_dir = render_output_dir or default_output_dir() / "template-tests"
        self._tasks = TaskSet(messages.error)
        self.document: TemplateDocument | None = None
        self.entries = []
        self.instances: tuple[tuple[str, str], ...] = ()
        self.last_validation: ValidationView | None = None
        self.last_outcome: RenderOutcome | None = None
        self._render: RenderHandle | None = None
        self._render_task: asyncio.Task | None = None

    # --- library -----------------------------------------------------------------------------

    def refresh(self) -> None:
        self.entries = self.library.entries()
        self.entries_changed.emit(self.entries)

    def _library_call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (LibraryError, DocumentError, OSError) as exc:
            self._messages.error(f"{what}: {exc}")
            return None

    def open(self, name: str, instance: str | None = None) -> None:
        """Open a template (its draft when it has one); a UI-format file is converted with
        ``instance``'s node definitions (asynchronously)."""
        # First, so that reopening the open template brings its unsaved edits back (as its draft).
        self._keep_unsaved()
        try:
            document = self.library.open(name)
        except NeedsObjectInfo as exc:
            if instance is None:
                self._messages.error(f"{exc}, then open it again")
                return
            self._tasks.spawn(self._open_converted(name, instance), "template-open", f"Opening '{name}'")
            return
        except (LibraryError, OSError) as exc:
            self._messages.error(f"Cannot open '{name}': {exc}")
            return
        self._set_document(document)
        if document.from_draft:
            problems = self.library.draft_problems(name)
            self._messages.info(
                f"Opened the draft of '{name}' ({len(problems)} problem(s) to fix before it can be saved)"
            )

    async def _open_converted(self, name: str, instance: str) -> None:
        object_info = await self._object_info(instance)
        if object_info is None:
            return
        document = self._library_call(
            f"Cannot open '{name}'", lambda: self.library.open(name, object_info=object_info)
        )
        if document is not None:
            self._set_document(document)

    def _keep_unsaved(self) -> None:
        """Unsaved edits of a user template are kept as its draft before another one replaces
        it (or the app closes): switching templates never loses work."""
        document = self.document
        if document is None or not document.dirty:
            return
        if document.read_only:
            document.dirty = False
            self._messages.info(
                f"Edits to the shipped '{document.name}' were not kept (duplicate it to edit)"
            )
            return
        try:
            self.library.save_draft(document)
        except (LibraryError, OSError) as exc:
            self._messages.error(f"Could not keep the unsaved edits of '{document.name}' as a draft: {exc}")
            return
        self._messages.info(f"Unsaved edits of '{document.name}' kept as its draft")
        self.refresh()

    def _set_document(self, document: TemplateDocument | None) -> None:
        if document is not self.document:
            self._keep_unsaved()
        self.document = document
        self.last_validation = None
        self.document_changed.emit(document)

    def close_document(self) -> None:
        self._set_document(None)

    def duplicate(self, name: str, new_name: str) -> None:
        entry = self._library_call(
            f"Cannot duplicate '{name}'", lambda: self.library.duplicate(name, new_name)
        )
        if entry is not None:
            self.refresh()
            self._messages.info(f"Duplicated '{name}' as '{entry.name}' (a user template you can edit)")
            self.open(entry.name)

    def duplicate_open(self, new_name: str) -> None:
        """Duplicate the open document, with its unsaved edits, as a new user template."""
        document = self.document
        if document is None:
            return
        entry = self._library_call(
            "Cannot duplicate", lambda: self.library.duplicate(document.name, new_name)
        )
        if entry is None:
            return
        document.name, document.origin, document.workflow_dirty = entry.name, "user", True
        self.refresh()
        self._messages.info(f"Duplicated as '{entry.name}'; save to keep your changes")
        self.document_changed.emit(document)

    def rename(self, name: str, new_name: str) -> None:
        entry = self._library_call(f"Cannot rename '{name}'", lambda: self.library.rename(name, new_name))
        if entry is None:
            return
        if self.document is not None and self.document.name == name:
            self.document.name = entry.name
            self.document_changed.emit(self.document)
        self.refresh()
        self._messages.info(f"Renamed '{name}' to '{entry.name}'")

    def delete(self, name: str) -> None:
        try:
            self.library.delete(name)
        except (LibraryError, OSError) as exc:
            self._messages.error(f"Cannot delete '{name}': {exc}")
            return
        if self.document is not None and self.document.name == name:
            self.document = None  # deleted on purpose: nothing to keep as a draft
            self._set_document(None)
        self.refresh()
        self._messages.info(f"Deleted '{name}'")

    def import_text(self, name: str, text: str, instance: str | None = None) -> None:
        self._tasks.spawn(
            self._import(name, lambda info: self.library.import_text(name, text, object_info=info), instance),
            "template-import",
            "Importing",
        )

    def import_file(self, path: Path, name: str | None = None, instance: str | None = None) -> None:
        self._tasks.spawn(
            self._import(
                name or path.stem,
                lambda info: self.library.import_file(path, name, object_info=info),
                instance,
            ),
            "template-import",
            "Importing",
        )

    async def _import(
        self, name: str, call: Callable[[Mapping | None], TemplateDocument], instance: str | None
    ) -> None:
        try:
            try:
                document = call(None)
            except NeedsObjectInfo:
                if instance is None:
                    raise
                document = call(await self._fetch_object_info(instance))
        except (LibraryError, OSError, InstanceUnavailable) as exc:
            self._messages.error(f"Import: {exc}")
            self.import_finished.emit(ImportResult(None, str(exc)))
            return
        self.refresh()
        self._set_document(document)
        self._messages.info(f"Imported '{document.name}': check the detected mapping, then save")
        self.import_finished.emit(ImportResult(document, ""))

    def save(self) -> SaveResult | None:
        document = self.document
        if document is None:
            return None
        result = self._library_call(f"Cannot save '{document.name}'", lambda: self.library.save(document))
        if result is None:
            return None
        if result.draft:
            self._messages.error(
                f"'{document.name}' saved as a draft: {len(result.problems)} problem(s) to fix (listed on their rows); "
                "the template keeps its last good map"
            )
        else:
            self._messages.info(f"Saved '{document.name}'")
        self.refresh()
        self.document_changed.emit(document)
        return result

    def discard_draft(self) -> None:
        document = self.document
        if document is None:
            return
        self.library.discard_draft(document.name)
        document.dirty = False  # discarded on purpose: not kept as a draft again
        self.refresh()
        self.open(document.name)
        self._messages.info(f"Discarded the draft of '{document.name}'")

    # --- instances ---------------------------------------------------------------------------

    def on_instance_rows(self, rows: Sequence[InstanceRow]) -> None:
        instances = tuple((row.name, row.health) for row in rows)
        if instances != self.instances:
            self.instances = instances
            self.instances_changed.emit(instances)

    async def _fetch_object_info(self, instance: str) -> Mapping[str, Any]:
        """The instance's node definitions, fresh; :class:`InstanceUnavailable` saying why not."""
        try:
            client = self._router().client(instance)
        except KeyError:
            raise InstanceUnavailable(
                f"no ComfyUI instance named '{instance}' (see Settings → ComfyUI instances)"
            ) from None
        self.busy_changed.emit(f"Reading the node definitions of {instance}…")
        try:
            async with asyncio.timeout(OBJECT_INFO_TIMEOUT):
                return await client.object_info(refresh=True)
        except (ComfyError, TimeoutError) as exc:
            raise InstanceUnavailable(
                f"cannot read /object_info of {instance}: {exc or 'timed out'}"
            ) from exc
        finally:
            self.busy_changed.emit("")

    async def _object_info(self, instance: str) -> Mapping[str, Any] | None:
        try:
            return await self._fetch_object_info(instance)
        except InstanceUnavailable as exc:
            self._messages.error(str(exc)[0].upper() + str(exc)[1:])
            return None

    # --- validation --------------------------------------------------------------------------

    def validate(self, instance: str, test_values: Mapping[str, str] | None = None) -> None:
        self._tasks.spawn(
            self._validate(instance, dict(test_values or {})), "template-validate", "Validation"
        )

    async def _validate(self, instance: str, test_values: dict[str, str]) -> None:
        document = self.document
        if document is None:
            return
        problems = tuple(document.problems())
        if problems:
            self._finish_validation(ValidationView(instance, ValidationReport(), LocatedIssues(), problems))
            return
        object_info = await self._object_info(instance)
        if object_info is None:
            return
        try:
            template = document.template()
            injected = inject(template, parse_test_values(document, test_values))
        except (DocumentError, InjectionError) as exc:
            problem = MapProblem(getattr(exc, "param", None) or "", str(exc))
            self._finish_validation(ValidationView(instance, ValidationReport(), LocatedIssues(), (problem,)))
            return
        report = validate_workflow(injected.workflow, object_info, template.injection_map)
        self._finish_validation(ValidationView(instance, report, locate_issues(report, document)))

    def _finish_validation(self, view: ValidationView) -> None:
        self.last_validation = view
        self.validation_finished.emit(view)
        if view.problems:
            self._messages.error(f"The map has {len(view.problems)} problem(s); fix the rows marked in red")
        elif view.ok:
            warnings = len(view.report.warnings)
            self._messages.info(
                f"Valid on {view.instance}" + (f" ({warnings} warning(s))" if warnings else "")
            )
        else:
            self._messages.error(
                f"Not valid on {view.instance}: {len(view.report.errors)} error(s), shown on their rows"
            )

    # --- test render -------------------------------------------------------------------------

    @property
    def rendering(self) -> bool:
        return self._render is not None

    def test_render(self, instance: str, test_values: Mapping[str, str]) -> None:
        if self.rendering or (self._render_task is not None and not self._render_task.done()):
            self._messages.error("A test render is running; cancel it first")
            return
        self._render_task = self._tasks.spawn(
            self._test_render(instance, dict(test_values)), "template-test-render", "Test render"
        )

    async def _test_render(self, instance: str, test_values: dict[str, str]) -> None:
        document = self.document
        if document is None:
            return
        try:
            template = document.template()
            values = parse_test_values(document, test_values)
        except DocumentError as exc:
            self.render_failed.emit(RenderFailure(f"The map has problems: {exc}", LocatedIssues()))
            self._messages.error(f"Test render not started: {exc}")
            return
        progress = RenderProgress()
        service = RenderService(self._router(), output_dir=self._output_dir)

        def on_event(event: object) -> None:
            view = progress.update(event)
            if view is not None:
                self.render_progress.emit(view)

        self._render = service.start(RenderRequest(template, values, instance=instance), on_event=on_event)
        self.render_started.emit()
        self._messages.info(f"Test render of '{document.name}' started on {instance}")
        try:
            outcome = await self._render.result()
        except RenderError as exc:
            self._render = None  # ended: the panel's buttons read ``rendering`` on the signal
            self._report_render_failure(exc, document)
            return
        finally:
            self._render = None
        self.last_outcome = outcome
        self.render_finished.emit(outcome)
        self._messages.info(f"Test render finished on {outcome.instance} in {outcome.timings.total:.1f} s")

    def _report_render_failure(self, exc: RenderError, document: TemplateDocument) -> None:
        issues = list(exc.issues)
        if isinstance(exc, RenderExecutionFailed) and exc.node_id is not None:
            # A node that raised while running belongs on its rows like a validation error.
            issues.append(
                ValidationIssue(
                    "execution_error",
                    f"failed while running: {exc.exception_type}: {exc.exception_message.strip()}",
                    node_id=exc.node_id,
                    node_title=node_title(document.workflow, exc.node_id),
                    class_type=document.workflow.get(exc.node_id, {}).get("class_type"),
                    params=exc.params,
                )
            )
        located = locate_issues(ValidationReport(tuple(issues)), document)
        self.render_failed.emit(RenderFailure(str(exc), located))
        details = "; ".join(issue.describe() for issue in exc.issues[:3])
        self._messages.error(f"Test render failed: {exc}" + (f" — {details}" if details else ""))

    def cancel_render(self) -> None:
        if self._render is not None:
            self._tasks.spawn(self._render.cancel(), "template-render-cancel", "Cancelling the test render")

    async def aclose(self) -> None:
        self._keep_unsaved()
        if self._render is not None:
            await self._render.cancel()
        await self._tasks.cancel_all()
