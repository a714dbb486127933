from django.apps import AppConfig


class SagasConfig(AppConfig):
    name = "sagas"
    verbose_name = "Sagas"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventstore import subscriptions
        from sagas import personal  # noqa: F401  (connects the erasure and export receivers)
        from sagas.welcome import WelcomeSaga

        subscriptions.register(WelcomeSaga())
