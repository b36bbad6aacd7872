"""``manage.py rebuild_message_counts``: recount the messages' facet table from scratch."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from swf_testbed.monitor.api.facets import rebuild_counts


class Command(BaseCommand):
    help = "Recount the facet counts of the messages list (after bulk imports or manual deletes)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"{rebuild_counts()} facet rows")
