"""How the CLI shows progress (`dnet.core.progress`) and its own remarks: `--quiet` and `--json`.

Every command that does long work takes the same two options, through `@progress_options()`:

  default   a live `rich.progress` display on stderr, transient (it is gone when the work is), and only
            when stderr is a terminal: a log, a pipe or CI sees no progress at all.
  --quiet   no progress and no remarks (load times, token rates): stdout holds only the command's output.
  --json    progress and remarks as JSON lines on stderr, one event per line, whether or not stderr is a
            terminal; stdout is unchanged, so `dnet generate --json ... > out.txt` still writes the text.
            Progress events are `Event.to_json()` ({"event": "start"|"advance"|"done"|"failed", "task",
            "name", "completed", "total", "unit", "parent", "elapsed_s"}); a remark is {"event": "note",
            "text": ..., and any figures it carries}; a dnet error is a last line {"event": "error", "text",
            "message", "hint"} and exit status 2.

`dnet plan` already writes its plan with `--json PATH`, so there the flag is spelled `--progress-json`;
every command accepts that spelling. Remarks go through `note()` so that both options govern them.
A new command (`dnet serve`) gets all of this with the decorator and `note()`.
"""
from __future__ import annotations

import functools
import json
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any, Callable

import click

from dnet.core.progress import ADVANCE, START, Event, Reporter, reporting
from dnet.errors import DnetError

OUTPUT_KEY = "dnet.output"


class JsonLinesReporter:
    """Each event as one line of JSON on `stream`."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self._lock = threading.Lock()

    def handle(self, event: Event) -> None:
        self.write(event.to_json())

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()


class RichReporter:
    """A transient `rich.progress` display: shown while any task is open, gone when the last one ends (so
    text printed after the work, a generated answer, never races a live display). Nested tasks are indented."""

    def __init__(self, console: Any):
        self.console = console
        self._display: Any = None
        self._rows: dict[int, Any] = {}        # our task id -> rich's task id
        self._depth: dict[int, int] = {}
        self._lock = threading.Lock()

    def handle(self, event: Event) -> None:
        with self._lock:
            if event.kind == START:
                self._start(event)
            elif event.task not in self._rows:
                return
            elif event.kind == ADVANCE:
                self._display.update(self._rows[event.task], completed=event.completed, count=_count(event))
            else:
                self._display.remove_task(self._rows.pop(event.task))
                self._depth.pop(event.task, None)
                if not self._rows:
                    self._display.stop()
                    self._display = None

    def _start(self, event: Event) -> None:
        if self._display is None:
            self._display = _rich_progress(self.console)
            self._display.start()
        depth = self._depth[event.parent] + 1 if event.parent in self._depth else 0
        self._depth[event.task] = depth
        self._rows[event.task] = self._display.add_task("  " * depth + event.name, total=event.total,
                                                     completed=event.completed, count=_count(event))
        self._display.refresh()     # drawn at once, not at the next tick: a short step is still seen


def _count(event: Event) -> str:
    return f"{event.completed}/{event.total} {event.unit}".rstrip() if event.total is not None else ""


def _rich_progress(console: Any) -> Any:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                    TimeElapsedColumn(), console=console, transient=True)


@dataclass
class Output:
    """What one command run shows besides its output: chosen by --quiet and --json."""
    quiet: bool = False
    json: bool = False
    stream: IO[str] | None = None           # where progress and remarks go; stderr by default

    def __post_init__(self) -> None:
        self._json = JsonLinesReporter(self.err) if self.json else None

    @property
    def err(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stderr

    def reporter(self) -> Reporter | None:
        if self.quiet:
            return None
        if self._json is not None:
            return self._json
        if not self.err.isatty():
            return None
        from rich.console import Console

        return RichReporter(Console(file=self.err))

    def note(self, text: str, color: str | None = "bright_black", **figures: Any) -> None:
        if self.quiet:
            return
        if self._json is not None:
            self._json.write({"event": "note", "text": text, **figures})
        else:
            click.secho(text, fg=color, file=self.err)

    def error(self, err: DnetError) -> None:
        """A dnet error as the JSON stream's last event (only with --json: otherwise main() prints it)."""
        if self._json is not None:
            self._json.write({"event": "error", "text": f"error: {err}", "message": err.message, "hint": err.hint})


def current_output() -> Output:
    """The running command's Output (a default one outside a command: remarks shown, no JSON)."""
    ctx = click.get_current_context(silent=True)
    found = ctx.find_root().meta.get(OUTPUT_KEY) if ctx is not None else None
    return found if found is not None else Output()


def note(text: str, color: str | None = "bright_black", **figures: Any) -> None:
    """A remark for a person (a load time, token rates), governed by --quiet and --json; `figures` are
    extra fields of its JSON event."""
    current_output().note(text, color, **figures)


def progress_options(json_names: tuple[str, ...] = ("--json", "--progress-json")) -> Callable:
    """Adds --quiet and --json to a click command and runs it with the progress reporter they choose."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def run(*args: Any, quiet: bool, progress_json: bool, **kwargs: Any) -> Any:
            output = Output(quiet=quiet, json=progress_json and not quiet)
            click.get_current_context().find_root().meta[OUTPUT_KEY] = output
            try:
                with reporting(output.reporter()):
                    return command(*args, **kwargs)
            except DnetError as err:
                if not output.json:
                    raise                      # main() prints it as one line, status 2
                output.error(err)
                sys.exit(2)                    # the JSON stream stays JSON to its last line

        run = click.option(*json_names, "progress_json", is_flag=True,
                           help="progress and remarks as JSON lines on stderr (one event a line)")(run)
        return click.option("--quiet", "-q", is_flag=True, help="no progress, no remarks: only the output")(run)

    return decorate
