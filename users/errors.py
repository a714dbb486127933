"""Business-rule errors of the users context; the API maps each to one status code."""

from uuid import UUID


class UserError(Exception):
    """Base of the users context's errors."""


class InvalidUserData(UserError, ValueError):
    """Field values that break a rule; ``errors`` maps field name to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class UserNotFound(UserError, LookupError):
    def __init__(self, user_id: UUID) -> None:
        super().__init__(f"user {user_id} does not exist")
        self.user_id = user_id


class UserAlreadyExists(UserError):
    def __init__(self, user_id: UUID) -> None:
        super().__init__(f"a user with id {user_id} exists already")
        self.user_id = user_id


class EmailAlreadyTaken(UserError):
    # The message names no address: error messages end up in logs and saga rows.
    def __init__(self, email: str) -> None:
        super().__init__("this email address belongs to another user")
        self.email = email


class UserIsDeleted(UserError):
    def __init__(self, user_id: UUID) -> None:
        super().__init__(f"user {user_id} is deleted and cannot change any more")
        self.user_id = user_id


class AlreadyWelcomed(UserError):
    def __init__(self, user_id: UUID) -> None:
        super().__init__(f"user {user_id} has been welcomed already")
        self.user_id = user_id


class StaleVersion(UserError):
    """The client's version (``If-Match``) is behind a change it has not seen."""

    def __init__(self, user_id: UUID, expected: int, actual: int) -> None:
        super().__init__(
            f"user {user_id} changed after version {expected} (it is at version {actual})"
        )
        self.user_id = user_id
        self.expected = expected
        self.actual = actual


class UserIsErased(UserIsDeleted):
    """A deleted user can be erased; an erased one is gone for every command."""

    def __init__(self, user_id: UUID) -> None:
        message = (
            f"user {user_id} has been erased (their personal data forgotten); it cannot change"
        )
        UserError.__init__(self, message)
        self.user_id = user_id
