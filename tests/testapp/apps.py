from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventstore import subscribers
        from tests.testapp.projections import TallyProjection

        subscribers.register(TallyProjection())
