"""``manage.py recount_runs``: count runs' slice and sample counters exactly (a repair)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api import run_counters


class Command(BaseCommand):
    help = (
        "Count the slice and sample counters of runs from their slices and samples, and say "
        "which had drifted (after a restore, a manual edit of the tables, or a loaddata)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "run_numbers", nargs="*", type=int, help="the runs to count (default: every run)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        numbers: list[int] = options["run_numbers"] or sorted(
            {
                *m.RunState.objects.values_list("run_number", flat=True),
                *m.TFSlice.objects.values_list("run_number", flat=True).distinct(),
            }
        )
        drifted = 0
        for number in numbers:
            with transaction.atomic():
                state = m.RunState.objects.filter(run_number=number).first()
                held = {f: getattr(state, f) for f in run_counters.COUNTERS} if state else None
                run_counters.recount(number)
                exact = run_counters.counted(number)
            if held is not None and held != exact:
                drifted += 1
                diff = ", ".join(
                    f"{k} {held[k]} → {exact[k]}" for k in exact if held[k] != exact[k]
                )
                self.stdout.write(f"run {number}: {diff}")
        self.stdout.write(f"{len(numbers)} runs counted, {drifted} had drifted")
