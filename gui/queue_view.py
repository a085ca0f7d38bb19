"""What the Queue tab shows, from ``trainer.run_queue.list_jobs``: pure functions (no gradio)."""
from __future__ import annotations

import html

from trainer.run_queue import QueueEntry

STATUS_ICONS = {"queued": "⏳", "running": "▶️", "completed": "✅", "stopped": "⏹️", "failed": "❌"}


def queue_html(entries: list[QueueEntry], options: dict) -> str:
    """The queue as a table: position, name, status (with the reason and log tail of a failure) and what
    differs from the job before; each row carries ``data-job`` and ``data-status``."""
    notes = []
    if options.get("paused"):
        reason = options.get("paused_reason") or "by you"
        notes.append(f"<p class='loom-queue-paused'>The queue is paused ({html.escape(reason)}): "
                     f"press Resume queue to go on.</p>")
    if not entries:
        return "".join(notes) + "<p class='loom-queue-empty'>The queue is empty: set up a job and press " \
                                "Add to queue.</p>"
    rows = []
    for e in entries:
        status = f"{STATUS_ICONS.get(e.status, '')} {html.escape(e.status)}"
        if e.detail:
            status += f"<br><small>{html.escape(e.detail)}</small>"
        if e.log_tail:
            tail = "\n".join(e.log_tail.splitlines()[-8:])
            status += f"<details><summary>log tail</summary><pre class='loom-log-tail'>{html.escape(tail)}</pre></details>"
        rows.append(f"<tr data-job='{html.escape(e.job_id)}' data-status='{html.escape(e.status)}'>"
                    f"<td>{e.position}</td><td>{html.escape(e.name)}</td><td>{status}</td>"
                    f"<td>{html.escape(e.diff)}</td></tr>")
    head = "<tr><th>#</th><th>Name</th><th>Status</th><th>Differs from the job before</th></tr>"
    return "".join(notes) + f"<table class='loom-queue'>{head}{''.join(rows)}</table>"


def removable_choices(entries: list[QueueEntry]) -> list[tuple[str, str]]:
    """Every job not running (a finished one may be cleared from the list; its run stays in the history)."""
    return [(f"{e.position}. {e.name} — {e.status}", e.job_id) for e in entries if e.status != "running"]
