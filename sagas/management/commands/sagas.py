"""Operate saga instances: list them (failed ones first of all), retry or cancel."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from sagas import runner
from sagas.models import SagaInstance


class Command(BaseCommand):
    help = "List saga instances, or retry / cancel one. Example: sagas list --status failed"

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="list instances, newest first")
        listing.add_argument("--status", choices=SagaInstance.Status.values)
        listing.add_argument("--limit", type=int, default=50)
        for name, text in (("retry", "run the step again now"), ("cancel", "give it up")):
            action = sub.add_parser(name, help=text)
            action.add_argument("ids", nargs="+", type=int, metavar="ID")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            self._list(options["status"], options["limit"])
            return
        operate = runner.retry if options["action"] == "retry" else runner.cancel
        for instance_id in options["ids"]:
            # The row lock keeps this from racing a step that is running right now.
            with transaction.atomic():
                instance = SagaInstance.objects.select_for_update().filter(pk=instance_id).first()
                if instance is None:
                    raise CommandError(f"no saga instance {instance_id}")
                try:
                    operate(instance)
                except ValueError as exc:
                    raise CommandError(str(exc)) from exc
            self.stdout.write(f"{options['action']}: {instance}")

    def _list(self, status: str | None, limit: int) -> None:
        instances = SagaInstance.objects.all()
        if status:
            instances = instances.filter(status=status)
        rows = list(instances[: max(1, limit)])
        if not rows:
            self.stdout.write("no saga instances" + (f" with status {status}" if status else ""))
            return
        for i in rows:
            error = f"  error: {i.last_error[:200]}" if i.last_error else ""
            self.stdout.write(
                f"{i.pk:>6}  {i.saga_type:<8} {i.correlation_key}  {i.status:<9} "
                f"step={i.step:<11} attempts={i.attempts}{error}"
            )
