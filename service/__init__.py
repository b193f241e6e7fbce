"""The serving process. onnxruntime's telemetry is off before onnxruntime loads: left on, it keeps a database under
~/.cache/Microsoft/DeveloperTools/.onnxruntime and looks up mobile.events.data.microsoft.com to upload it
(seen under strace; ``onnxruntime.disable_telemetry_events()`` does not stop either). A server makes no outbound
calls."""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
