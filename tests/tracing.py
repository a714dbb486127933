"""A span exporter for tests: each process writes its finished spans, one JSON object a
line, to a file of its own in ``$TEST_TRACE_DIR`` (the test reads them all)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class FileSpanExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        path = Path(os.environ["TEST_TRACE_DIR"]) / f"{os.getpid()}.jsonl"
        with path.open("a") as out:
            for span in spans:
                context = span.get_span_context()
                parent = span.parent
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": format(context.trace_id, "032x"),
                            "span_id": format(context.span_id, "016x"),
                            "parent_id": format(parent.span_id, "016x") if parent else None,
                            "pid": os.getpid(),
                            "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


def file_exporter() -> FileSpanExporter:
    return FileSpanExporter()


def read_spans(directory: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
