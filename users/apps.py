from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "users"
    verbose_name = "Users"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventstore import subscribers
        from users import (
            api_errors,  # noqa: F401  (maps the domain errors to HTTP)
            events,  # noqa: F401  (registers the event types)
        )
        from users.projections import UserListProjection

        subscribers.register(UserListProjection())
