from django.apps import AppConfig


class EventStoreConfig(AppConfig):
    name = "eventstore"
    verbose_name = "Event store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventstore import metrics, receivers  # noqa: F401  (connect their receivers)

        # Read by config/metrics.py when Prometheus scrapes.
        self.metrics_collectors = [metrics.SubscriberCollector()]
