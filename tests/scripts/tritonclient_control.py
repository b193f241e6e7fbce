"""Runs tritonclient[grpc]'s model control, configuration and statistics calls against an offshelf server and prints
what it got, as JSON. Run in tritonclient's own virtualenv (see tritonclient_check.py). Arguments: ADDRESS MODEL
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

address, model = sys.argv[1:]
client = grpcclient.InferenceServerClient(address)


def status(call):
    try:
        call()
        return "OK"
    except InferenceServerException as err:
        return err.status()


config = client.get_model_config(model, as_json=True)["config"]
dims = [int(d) for d in config["input"][0]["dims"]]
tensor = grpcclient.InferInput(config["input"][0]["name"], [2, *dims], "FP32")
tensor.set_data_from_numpy(np.zeros([2, *dims], np.float32))
client.infer(model, [tensor])
seen = {
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
print(json.dumps(seen))
