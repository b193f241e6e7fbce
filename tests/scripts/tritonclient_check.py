"""Runs the stock tritonclient (grpc or http) against an offshelf server and prints what it got, as JSON.

Run in its own virtualenv and process: tritonclient's copy of the `inference` protobufs would clash
with offshelf's in one process. Arguments: grpc|http ADDRESS MODEL FP32_NPY IMAGE...
"""

import json
import sys

import numpy as np
import tritonclient.grpc
import tritonclient.http
from tritonclient.utils import InferenceServerException

protocol, address, model, fp32_file, *images = sys.argv[1:]
grpcclient = tritonclient.http if protocol == "http" else tritonclient.grpc
client = grpcclient.InferenceServerClient(address)
metadata = client.get_model_metadata(model) if protocol == "http" else client.get_model_metadata(model, as_json=True)
input_name = metadata["inputs"][0]["name"]

encoded = grpcclient.InferInput(input_name, [len(images)], "BYTES")
encoded.set_data_from_numpy(np.array([open(p, "rb").read() for p in images], dtype=np.object_))
from_bytes = client.infer(model, [encoded], outputs=[grpcclient.InferRequestedOutput("embedding")])

tensor = np.load(fp32_file)
preprocessed = grpcclient.InferInput(input_name, list(tensor.shape), "FP32")
preprocessed.set_data_from_numpy(tensor)
from_fp32 = client.infer(model, [preprocessed])

try:
    client.infer("no-such-model", [encoded])
    unknown_model = "no error"
except InferenceServerException as err:
    unknown_model = err.status()

print(
    json.dumps(
        {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "unknown_model_ready": client.is_model_ready("no-such-model"),
            "metadata": metadata,
            "bytes_embedding": from_bytes.as_numpy("embedding").tolist(),
            "fp32_embedding": from_fp32.as_numpy("embedding").tolist(),
            "fp32_logits_shape": list(from_fp32.as_numpy("logits").shape),
            "unknown_model": unknown_model,
        }
    )
)
