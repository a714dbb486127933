"""Test settings: the real ones plus a small app whose projection exercises the engine."""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS, env

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
WELCOME_DELAY_SECONDS = 0.0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Worker processes started by tests pick a misbehaving backend through the environment.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default="/tmp")
# WhiteNoise warns once per request when STATIC_ROOT is missing (collectstatic not run).
STATIC_ROOT = BASE_DIR / ".data" / "test-static"  # noqa: F405
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Fixed test keys of personal data (tests that rotate add their own in front).
PERSONAL_DATA_MASTER_KEYS = ["dGVzdC1tYXN0ZXIta2V5LW9mLXBlcnNvbmFsLWRhdGE="]
PERSONAL_DATA_HMAC_KEY = "test-hmac-key-of-personal-data"
# Processes started by tests may export their spans with a test exporter (tests/tracing.py).
TRACING_EXPORTER_FACTORY = env.str("TEST_TRACING_EXPORTER", default="")
