"""Settings of bench/partitions.py: the service's own, plus the slow projection's app."""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "slow_projection.SlowProjectionApp"]
