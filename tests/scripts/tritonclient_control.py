"""Runs tritonclient's model control, configuration and statistics calls (grpc or http) against an offshelf server
and prints what it got, as JSON, in the grpc client's shapes (an HTTP status as the gRPC code it stands for). Run in
tritonclient's own virtualenv (see tritonclient_check.py). Arguments: grpc|http ADDRESS MODEL IMAGE
"""

import json
import sys

import numpy as np
import tritonclient.grpc
import tritonclient.http
from tritonclient.utils import InferenceServerException

protocol, address, model, image = sys.argv[1:]
http = protocol == "http"
grpcclient = tritonclient.http if http else tritonclient.grpc
client = grpcclient.InferenceServerClient(address)
GRPC_CODE_OF_HTTP = {"400": "INVALID_ARGUMENT", "404": "NOT_FOUND", "409": "FAILED_PRECONDITION", "503": "UNAVAILABLE"}


def code(err):
    return f"StatusCode.{GRPC_CODE_OF_HTTP[err.status()]}" if http else err.status()


def as_json(call, *args):
    return call(*args) if http else call(*args, as_json=True)


def model_config():
    config = as_json(client.get_model_config, model)
    return config if http else config["config"]


def repository_index():
    index = as_json(client.get_model_repository_index)
    return index if http else index.get("models", [])


def status(call):
    try:
        call()
        return "OK"
    except InferenceServerException as err:
        return code(err)


def refusal(config, **files):
    try:
        client.load_model(model, config=json.dumps(config), files=files or None)
        return "OK"
    except InferenceServerException as err:
        return f"{code(err)}: {err.message()}"


def embedding_of(input_name):
    """The embedding of the image sent as BYTES under this input name."""
    encoded = grpcclient.InferInput(input_name, [1], "BYTES")
    encoded.set_data_from_numpy(np.array([open(image, "rb").read()], dtype=np.object_))
    return client.infer(model, [encoded]).as_numpy("embedding").tolist()


def served_with():
    config = model_config()
    return {
        "max_batch_size": config["max_batch_size"],
        "instances": config["instance_group"][0]["count"],
        "version_policy": config["version_policy"],
        "delay_us": config["dynamic_batching"].get("max_queue_delay_microseconds", "0"),
    }


config = model_config()
dims = [int(d) for d in config["input"][0]["dims"]]
tensor = grpcclient.InferInput(config["input"][0]["name"], [2, *dims], "FP32")
tensor.set_data_from_numpy(np.zeros([2, *dims], np.float32))
client.infer(model, [tensor])
seen = {
    "initial": served_with(),
    "extensions": as_json(client.get_server_metadata).get("extensions", []),
    "index": repository_index(),
    "config": config,
    "metadata": as_json(client.get_model_metadata, model),
    "statistics": as_json(client.get_inference_statistics, model)["model_stats"],
}
client.unload_model(model)
seen["ready_after_unload"] = client.is_model_ready(model)
seen["index_after_unload"] = repository_index()
seen["infer_after_unload"] = status(lambda: client.infer(model, [tensor]))
client.load_model(model)
seen["ready_after_load"] = client.is_model_ready(model)
seen["load_unknown"] = status(lambda: client.load_model("no-such-model"))
by_name = {i["name"]: i["datatype"] for i in seen["metadata"]["inputs"]}  # how Triton's clients read them
seen["bytes_input"] = [name for name, datatype in by_name.items() if datatype == "BYTES"]
seen["embeddings"] = [embedding_of(name) for name in [*seen["bytes_input"], config["input"][0]["name"]]]
override = {
    "max_batch_size": 4,
    "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    "version_policy": {"specific": {"versions": [1]}},
    "dynamic_batching": {"max_queue_delay_microseconds": 3000},
}
client.load_model(model, config=json.dumps(override))
seen["overridden"] = served_with()
seen["refused"] = {
    "zero_batch": refusal({"max_batch_size": 0}),
    "inputs": refusal({"input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 8, 8]}]}),
    "two_groups": refusal({"instance_group": [{"count": 1}, {"count": 2}]}),
    "files": refusal({}, **{"file:1/model.onnx": b"graph"}),
}
seen["after_refusals"] = served_with()
client.load_model(model)  # without a config: serving.json's settings (none here: the server's) again
seen["after_plain_load"] = served_with()
print(json.dumps(seen))
