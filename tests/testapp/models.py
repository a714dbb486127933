from django.db import models


class Tally(models.Model):
    """Per stream: how many test.Noted events, and the sum of their ``n``."""

    stream_id = models.TextField(primary_key=True)
    count = models.IntegerField()
    total = models.BigIntegerField()
    last_version = models.IntegerField()

    class Meta:
        db_table = "testapp_tally"

    def __str__(self) -> str:
        return f"{self.stream_id}: {self.count}"


class Switch(models.Model):
    """Test switches that threads and worker processes read from the database."""

    name = models.TextField(primary_key=True)
    value = models.TextField(default="")

    class Meta:
        db_table = "testapp_switch"

    def __str__(self) -> str:
        return self.name


def switch_is_on(name: str) -> bool:
    return Switch.objects.filter(name=name).exists()


class BatchLog(models.Model):
    """One row per committed batch of the tally projection (when TALLY_LOG_BATCHES is set):
    which process ran it, which streams it touched, and when, to show batches overlap."""

    pid = models.IntegerField()
    started = models.FloatField()
    finished = models.FloatField()
    events = models.IntegerField()

    class Meta:
        db_table = "testapp_batch_log"

    def __str__(self) -> str:
        return f"{self.pid}: {self.events} events"
