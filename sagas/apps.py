from django.apps import AppConfig


class SagasConfig(AppConfig):
    name = "sagas"
    verbose_name = "Sagas"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from sagas import (
            metrics,
            personal,  # noqa: F401  (connects the erasure and export receivers)
            welcome,
        )

        welcome.register()
        # Read by config/metrics.py when Prometheus scrapes.
        self.metrics_collectors = [metrics.SagaInstancesCollector()]
