"""Which partition of a subscriber an event belongs to.

Every event stores its stream's bucket, ``BUCKETS`` of them: the first byte of the MD5 of
the stream id, modulo ``BUCKETS`` (a generated column, so PostgreSQL and this module
compute the same thing). Partition ``p`` of a subscriber split into ``n`` reads the
buckets ``b`` with ``b % n == p``: all events of a stream are in one partition, and each
partition's feed is read through the ``(bucket, transaction_id, position)`` index.
A count that divides ``BUCKETS`` gives every partition the same share.
"""

from __future__ import annotations

import hashlib

from django.conf import settings

BUCKETS = 32


def bucket_of(stream_id: str) -> int:
    """The stream's bucket, as the events table's generated column computes it."""
    return hashlib.md5(stream_id.encode(), usedforsecurity=False).digest()[0] % BUCKETS


def partition_of(stream_id: str, partitions: int) -> int:
    return bucket_of(stream_id) % partitions


def buckets_of(partition: int, partitions: int) -> tuple[int, ...]:
    return tuple(b for b in range(BUCKETS) if b % partitions == partition)


def validate(partitions: object, name: str) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise ValueError(f"{name}: the partition count must be an integer, not {partitions!r}")
    if not 1 <= partitions <= BUCKETS:
        raise ValueError(f"{name}: the partition count must be between 1 and {BUCKETS}")
    return partitions


def configured(name: str, default: int) -> int:
    """A subscriber's partition count: ``SUBSCRIBER_PARTITIONS[name]`` or its class's."""
    overrides = getattr(settings, "SUBSCRIBER_PARTITIONS", {}) or {}
    return validate(overrides.get(name, default), name)
