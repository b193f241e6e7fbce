"""Export to ONNX. onnxruntime's telemetry (a database in ~/.cache and uploads to Microsoft) is off before the
parity check loads onnxruntime."""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
