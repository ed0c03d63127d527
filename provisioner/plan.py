"""Plan, then act: a step says what is, what it would change, and how to apply that change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from rich.console import Console


class StepState(StrEnum):
    OK = "ok"  # already right: nothing to do
    CHANGE = "change"  # applying it changes the host


@dataclass
class Step:
    component: str  # "images", "services", "blender", "aliases"
    title: str  # what the step is about, e.g. "link /usr/bin/blender"
    state: StepState
    detail: str = ""  # what is there now, or what would change
    apply: Callable[[], str | None] | None = field(default=None, repr=False)  # returns what it did

    @property
    def needed(self) -> bool:
        return self.state is StepState.CHANGE


@dataclass
class Outcome:
    changed: list[str] = field(default_factory=list)
    already_right: list[str] = field(default_factory=list)

    def merge(self, other: Outcome) -> None:
        self.changed += other.changed
        self.already_right += other.already_right


def show_plan(console: Console, steps: Sequence[Step], *, heading: str = "Plan") -> None:
    console.print(f"[bold]{heading}[/bold]")
    for s in steps:
        mark = "[green]ok[/green]    " if not s.needed else "[yellow]change[/yellow]"
        line = f"  {mark} {s.component}: {s.title}"
        if s.detail:
            line += f" [dim]({s.detail})[/dim]"
        console.print(line, highlight=False)


def apply_steps(console: Console, steps: Sequence[Step], *, dry_run: bool) -> Outcome:
    """Apply the steps that need it, in order; report each. With dry_run, apply nothing."""
    out = Outcome()
    for s in steps:
        label = f"{s.component}: {s.title}"
        if not s.needed:
            out.already_right.append(label)
            continue
        if dry_run or s.apply is None:
            continue
        done = s.apply()
        out.changed.append(f"{label}" + (f" ({done})" if done else ""))
    return out


def run_steps(console: Console, steps: Sequence[Step], *, dry_run: bool, heading: str = "Plan") -> Outcome:
    show_plan(console, steps, heading=heading)
    return apply_steps(console, steps, dry_run=dry_run)


def report(console: Console, outcome: Outcome, *, dry_run: bool) -> None:
    if dry_run:
        console.print("[bold]Dry run:[/bold] nothing was changed.")
        return
    if not outcome.changed:
        console.print("[bold green]Nothing changed:[/bold green] everything was already right.")
        return
    console.print("[bold]Changed:[/bold]")
    for item in outcome.changed:
        console.print(f"  - {item}", highlight=False)
    if outcome.already_right:
        console.print(f"[bold]Already right:[/bold] {len(outcome.already_right)} step(s)")
        for item in outcome.already_right:
            console.print(f"  - {item}", highlight=False)


@dataclass
class Check:
    """One line of `invoke status`: what was checked, whether it is right, and the command that fixes it."""

    name: str
    ok: bool
    state: str
    fix: str = ""
