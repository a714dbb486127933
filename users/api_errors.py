"""What the users context's errors mean over HTTP (registered with config.errors)."""

from __future__ import annotations

from rest_framework import exceptions

from config.errors import Conflict, PreconditionFailed, translates
from eventstore.errors import ConcurrencyError, InvalidAppend, StreamNotFound
from users import errors


@translates(errors.InvalidUserData)
def _invalid(exc: errors.InvalidUserData) -> Exception:
    return exceptions.ValidationError(exc.errors)


@translates(errors.StaleVersion)
def _stale(exc: errors.StaleVersion) -> Exception:
    error = PreconditionFailed(
        f"The user changed after version {exc.expected} (it is at version {exc.actual}); "
        "reload it and retry."
    )
    error.problem_extra = {"current_version": exc.actual}  # type: ignore[attr-defined]
    return error


@translates(errors.UserNotFound, StreamNotFound)
def _not_found(exc: Exception) -> Exception:
    return exceptions.NotFound(str(exc))


@translates(errors.UserError)
def _conflict(exc: errors.UserError) -> Exception:
    return Conflict(str(exc))


@translates(ConcurrencyError)
def _lost_race(exc: ConcurrencyError) -> Exception:
    return Conflict(f"{exc} (another change won the race); reload the resource and try again")


@translates(InvalidAppend)
def _invalid_append(exc: InvalidAppend) -> Exception:
    return exceptions.ValidationError({"detail": [str(exc)]})
