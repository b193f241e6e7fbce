"""Runs tritonclient[grpc]'s model control, configuration and statistics calls against an offshelf server and prints
what it got, as JSON. Run in tritonclient's own virtualenv (see tritonclient_check.py). Arguments: ADDRESS MODEL
IMAGE
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

address, model, image = sys.argv[1:]
client = grpcclient.InferenceServerClient(address)


def status(call):
    try:
        call()
        return "OK"
    except InferenceServerException as err:
        return err.status()


def refusal(config, **files):
    try:
        client.load_model(model, config=json.dumps(config), files=files or None)
        return "OK"
    except InferenceServerException as err:
        return f"{err.status()}: {err.message()}"


def embedding_of(input_name):
    """The embedding of the image sent as BYTES under this input name."""
    encoded = grpcclient.InferInput(input_name, [1], "BYTES")
    encoded.set_data_from_numpy(np.array([open(image, "rb").read()], dtype=np.object_))
    return client.infer(model, [encoded]).as_numpy("embedding").tolist()


def served_with():
    config = client.get_model_config(model, as_json=True)["config"]
    return {
        "max_batch_size": config["max_batch_size"],
        "instances": config["instance_group"][0]["count"],
        "version_policy": config["version_policy"],
        "delay_us": config["dynamic_batching"].get("max_queue_delay_microseconds", "0"),
    }


config = client.get_model_config(model, as_json=True)["config"]
dims = [int(d) for d in config["input"][0]["dims"]]
tensor = grpcclient.InferInput(config["input"][0]["name"], [2, *dims], "FP32")
tensor.set_data_from_numpy(np.zeros([2, *dims], np.float32))
client.infer(model, [tensor])
seen = {
    "initial": served_with(),
    "extensions": client.get_server_metadata(as_json=True).get("extensions", []),
    "index": client.get_model_repository_index(as_json=True).get("models", []),
    "config": config,
    "metadata": client.get_model_metadata(model, as_json=True),
    "statistics": client.get_inference_statistics(model, as_json=True)["model_stats"],
}
client.unload_model(model)
seen["ready_after_unload"] = client.is_model_ready(model)
seen["index_after_unload"] = client.get_model_repository_index(as_json=True).get("models", [])
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
