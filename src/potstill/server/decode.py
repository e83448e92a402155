"""The server's rows and results, kept importable from here: decoding itself is potstill.decode's (engine.py
schedules and samples for torch and ONNX Runtime models alike; text.py turns tokens into streamed text).

    from potstill.server.decode import Row, Result     # == potstill.decode.text.Row, .Result
"""

from __future__ import annotations

from ..decode.text import Result, Row

__all__ = ["Result", "Row"]
