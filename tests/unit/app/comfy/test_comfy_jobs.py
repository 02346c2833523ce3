"""Job state and event routing, fed with typed events directly (no sockets)."""

from __future__ import annotations

from app.comfy.errors import ExecutionFailed, JobInterrupted, JobLost
from app.comfy.events import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    JobQueued,
    PreviewImage,
    Progress,
    StatusEvent,
)
from app.comfy.jobs import Job, JobState, JobTracker
from app.comfy.results import HistoryEntry

PROMPT = {"4": {}, "3": {}, "8": {}, "9": {}}


def new_job(prompt_id: str = "p1", *, previews: bool = False) -> Job:
    job = Job(prompt_id, "gpu0", PROMPT, wants_previews=previews)
    job.accepted(JobQueued(prompt_id, 1, "gpu0"))
    return job


async def test_success_path_tracks_nodes_progress_and_outputs():
    tracker = JobTracker()
    job = new_job()
    tracker.register(job)
    for event in (
        ExecutionStart("p1"),
        ExecutionCached("p1", ("4",)),
        Executing("p1", "3"),
        Progress("p1", "3", 2, 4),
    ):
        tracker.feed(event)
    progress = job.progress
    assert job.state is JobState.RUNNING and job.started
    assert (progress.node, progress.node_value, progress.node_max, progress.cached) == ("3", 2, 4, 1)
    assert 0.25 < progress.fraction < 0.5

    tracker.feed(Executing("p1", "8"))
    tracker.feed(
        Executed("p1", "9", "9", {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]})
    )
    tracker.feed(ExecutionSuccess("p1"))
    assert job.done and job.state is JobState.SUCCEEDED and job.error is None
    assert job.outputs["9"]["images"][0]["filename"] == "a.png"
    assert not job.history_written.is_set()
    tracker.feed(Executing("p1", None))
    assert job.history_written.is_set()
    assert [type(e).__name__ for e in [e async for e in job.events()]][-1] == "ExecutionSuccess"


async def test_executing_null_ends_the_job_on_old_servers():
    job = new_job()
    job.feed(ExecutionStart("p1"))
    job.feed(Executing("p1", None))
    assert job.done and job.state is JobState.FINISHED and job.history_written.is_set()


async def test_error_and_interrupt_become_typed_failures():
    failing = new_job("a")
    failing.feed(ExecutionError("a", "8", "VAEDecode", "RuntimeError", "boom", ("tb",), ("3",)))
    assert failing.state is JobState.FAILED and isinstance(failing.error, ExecutionFailed)
    assert failing.error.node_id == "8" and failing.error.instance == "gpu0"

    stopped = new_job("b")
    stopped.feed(ExecutionInterrupted("b", "3", "KSampler", ("4",)))
    assert stopped.state is JobState.INTERRUPTED and isinstance(stopped.error, JobInterrupted)


async def test_events_before_the_reply_are_buffered_and_replayed_for_the_server_id():
    tracker = JobTracker()
    tracker.feed(ExecutionStart("server-id"))
    tracker.feed(Executing("server-id", "3"))
    job = Job("mine", "gpu0", PROMPT)
    tracker.register(job)
    tracker.rekey(job, "server-id")
    job.accepted(JobQueued("server-id", 1, "gpu0"))

    assert job.prompt_id == "server-id" and job.started and job.node == "3"
    assert "mine" not in tracker.jobs
    events = []
    async for event in job.events():
        events.append(event)
        if len(events) == 3:
            break
    assert [type(e) for e in events] == [JobQueued, ExecutionStart, Executing]


async def test_orphan_buffer_is_bounded():
    tracker = JobTracker(orphan_limit=2)
    for index in range(5):
        tracker.feed(ExecutionStart(f"other-{index}"))
    assert len(tracker._orphans) == 2


async def test_idless_progress_and_previews_go_to_the_running_prompt():
    tracker = JobTracker()
    job = new_job(previews=True)
    tracker.register(job)
    tracker.feed(ExecutionStart("p1"))
    tracker.feed(Executing("p1", "3"))
    tracker.feed(Progress(None, None, 1, 4))
    tracker.feed(PreviewImage(None, None, "image/jpeg", b"jpg"))
    tracker.feed(Executing(None, "8"))  # re-sent by the server after a reconnect
    assert job.node == "8"
    previews = [e for e in job._log if isinstance(e, PreviewImage)]
    assert previews[0].prompt_id == "p1" and previews[0].node_id == "3"
    progress = [e for e in job._log if isinstance(e, Progress)]
    assert progress[0].prompt_id == "p1" and progress[0].node == "3"


async def test_previews_are_dropped_for_jobs_that_did_not_ask():
    job = new_job(previews=False)
    job.feed(PreviewImage("p1", "3", "image/jpeg", b"jpg"))
    assert not any(isinstance(e, PreviewImage) for e in job._log)


async def test_status_events_belong_to_no_job():
    tracker = JobTracker()
    assert tracker.feed(StatusEvent(3)) is None


async def test_finish_from_history_reads_the_outcome():
    ok = new_job("ok")
    ok.finish_from_history(
        HistoryEntry.parse(
            "ok",
            {
                "outputs": {"9": {"images": [{"filename": "x.png", "subfolder": "", "type": "output"}]}},
                "status": {"status_str": "success", "completed": True, "messages": [["execution_start", {}]]},
            },
        )
    )
    assert ok.state is JobState.SUCCEEDED and ok.started and "9" in ok.outputs

    broken = new_job("broken")
    broken.finish_from_history(
        HistoryEntry.parse(
            "broken",
            {
                "outputs": {},
                "status": {
                    "status_str": "error",
                    "completed": False,
                    "messages": [
                        [
                            "execution_error",
                            {
                                "node_id": "8",
                                "node_type": "VAEDecode",
                                "exception_type": "E",
                                "exception_message": "m",
                            },
                        ]
                    ],
                },
            },
        )
    )
    assert broken.state is JobState.FAILED and broken.error.node_type == "VAEDecode"

    cancelled = new_job("cancelled")
    cancelled.finish_from_history(
        HistoryEntry.parse(
            "cancelled",
            {
                "outputs": {},
                "status": {
                    "status_str": "error",
                    "completed": False,
                    "messages": [["execution_interrupted", {"node_id": "3"}]],
                },
            },
        )
    )
    assert cancelled.state is JobState.INTERRUPTED


async def test_history_without_status_counts_as_success():
    entry = HistoryEntry.parse("old", {"outputs": {}, "status": None})
    assert entry.error_for("old", None) is None


async def test_fail_from_outside_ends_the_stream():
    job = new_job()
    job.fail(JobLost("server restarted", prompt_id="p1", started=False))
    assert job.state is JobState.LOST and [type(e) async for e in job.events()] == [JobQueued]


async def test_tracker_forgets_old_finished_jobs_but_keeps_running_ones():
    tracker = JobTracker(keep_finished=2)
    running = new_job("running")
    tracker.register(running)
    for index in range(6):
        job = new_job(f"done-{index}")
        tracker.register(job)
        job.feed(ExecutionSuccess(job.prompt_id))
    tracker.register(new_job("last"))
    assert "running" in tracker.jobs and "last" in tracker.jobs
    assert len([j for j in tracker.jobs.values() if j.done]) <= 4
