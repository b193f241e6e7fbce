"""The HTTP door (--http-port) on a real server with the real default model: the Open Inference Protocol's REST
binding (our requests and the stock tritonclient.http), offshelf's JSON API with multipart uploads, OpenAI-style
embeddings, and what every call gets whatever its route (request ids, counts, JSON errors, size limits). Answers
are compared with the gRPC port's, which must be the same to the bit."""

from __future__ import annotations

import base64
import json
import socket

import grpc
import numpy as np
import pytest
import requests

from offshelf.clients import Client
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc

from common import serving, shared_photos, skimage_photo

MODEL = "efficientnet-lite0"
PHOTOS = [skimage_photo(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    with serving(model_repo, tmp_path_factory.mktemp("http") / "data", http_port=0, drain_seconds=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with Client(server.address, timeout=60) as connected:
        yield connected


def infer_url(server, version: str = "") -> str:
    return f"{server.http_url}/v2/models/{MODEL}{f'/versions/{version}' if version else ''}/infer"


def test_health_metadata_and_readiness_of_the_rest_binding(server):
    assert requests.get(f"{server.http_url}/v2/health/live", timeout=10).status_code == 200
    ready = requests.get(f"{server.http_url}/v2/health/ready", timeout=10)
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert requests.get(f"{server.http_url}/v2", timeout=10).json()["name"] == "offshelf"
    metadata = requests.get(f"{server.http_url}/v2/models/{MODEL}", timeout=10).json()
    assert metadata["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}
    assert {o["name"]: o["shape"] for o in metadata["outputs"]}["embedding"] == [-1, 1280]
    assert requests.get(f"{server.http_url}/v2/models/{MODEL}/versions/1/ready", timeout=10).status_code == 200
    unknown = requests.get(f"{server.http_url}/v2/models/no-such-model", timeout=10)
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["error"]
    index = requests.post(f"{server.http_url}/v2/repository/index", json={}, timeout=10).json()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [(MODEL, "1", "READY")]


def test_json_and_binary_infer_give_the_grpc_answers_to_the_bit(server, client):
    expected = client.embed(PHOTOS)
    body = {
        "id": "r-1",
        "inputs": [
            {
                "name": "encoded",
                "datatype": "BYTES",
                "shape": [len(PHOTOS)],
                "data": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in PHOTOS],
            }
        ],
        "outputs": [{"name": "embedding"}, {"name": "logits"}],
    }
    answer = requests.post(infer_url(server), json=body, timeout=60).json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (MODEL, "1", "r-1")
    for output in answer["outputs"]:
        got = np.asarray(output["data"], np.float32).reshape(output["shape"])
        assert np.array_equal(got, expected[output["name"]]), output["name"]

    # Triton's binary-data extension: the JSON header, then each input's bytes; binary outputs after the answer
    blobs = [p.read_bytes() for p in PHOTOS]
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in blobs)
    header = {
        "inputs": [
            {"name": "encoded", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(raw)}}
        ],
        "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
    }
    text = json.dumps(header).encode()
    response = requests.post(
        infer_url(server, "1"),
        data=text + raw,
        headers={"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    split = int(response.headers["Inference-Header-Content-Length"])
    (output,) = json.loads(response.content[:split])["outputs"]
    assert output["parameters"]["binary_data_size"] == len(response.content) - split == 3 * 1280 * 4
    got = np.frombuffer(response.content[split:], "<f4").reshape(output["shape"])
    assert np.array_equal(got, expected["embedding"])


def test_stock_tritonclient_http_gives_the_grpc_answers_to_the_bit(
    server, client, model_repo, tmp_path, tritonclient_python
):
    from test_inference_protocol import output, preprocessed, stock_tritonclient

    tensor = preprocessed(model_repo, PHOTOS)
    address = server.http_url.removeprefix("http://")
    seen = stock_tritonclient(tritonclient_python, "http", address, tensor, tmp_path)
    assert (seen["live"], seen["ready"], seen["model_ready"], seen["unknown_model_ready"]) == (True, True, True, False)
    assert seen["metadata"]["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}
    assert np.array_equal(np.asarray(seen["bytes_embedding"], np.float32), client.embed(PHOTOS)["embedding"])
    request = oip.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="FP32", shape=list(tensor.shape))
    request.raw_input_contents.append(tensor.astype("<f4").tobytes())
    with grpc.insecure_channel(server.address) as channel:
        over_grpc = output(oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60), "embedding")
    assert np.array_equal(np.asarray(seen["fp32_embedding"], np.float32), over_grpc)
    assert seen["fp32_logits_shape"] == [3, 1000]
    assert seen["unknown_model"] == "404"


def ukbench(objects: int) -> list:
    """The first `objects` UKBench objects' four views each (ukbench00000-3 are object 0, ...)."""
    return shared_photos("ukbench", 4 * objects)


def test_a_collection_over_json_and_multipart_finds_an_objects_other_views(server, client):
    url = f"{server.http_url}/v1/collections"
    created = requests.post(url, json={"name": "http-ukbench", "model": MODEL}, timeout=30)
    assert created.status_code == 200 and created.json()["binding"]["dim"] == 1280
    assert requests.post(url, json={"name": "http-ukbench", "model": MODEL}, timeout=30).status_code == 409
    photos = ukbench(4)
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[1:]]
    described = {"items": [{"id": p.stem, "label": f"object-{int(p.stem[-5:]) // 4}"} for p in photos[1:]]}
    added = requests.post(f"{url}/http-ukbench/items", files=[*files, ("request", (None, json.dumps(described)))])
    assert added.status_code == 200, added.text
    assert added.json() == {"ids": [p.stem for p in photos[1:]], "count": 15}

    query = photos[0]  # object 0's first view: its three other views must come first
    hits = requests.post(
        f"{url}/http-ukbench/search",
        files=[("image", (query.name, query.read_bytes(), "image/jpeg")), ("request", (None, '{"k": 3}'))],
        timeout=60,
    ).json()["hits"]
    assert [h["id"] for h in hits] == [p.stem for p in photos[1:4]] or {h["label"] for h in hits} == {"object-0"}
    over_grpc = client.search("http-ukbench", image=query, k=3)
    assert [(h["id"], np.float32(h["score"])) for h in hits] == [(h.id, np.float32(h.score)) for h in over_grpc]

    by_label = requests.post(
        f"{url}/http-ukbench/search", json={"id": photos[5].stem, "k": 10, "filter": {"labels": ["object-1"]}}
    ).json()["hits"]
    assert {h["label"] for h in by_label} == {"object-1"} and len(by_label) == 4  # the queried item, then 3
    page = requests.get(f"{url}/http-ukbench/items", params={"page_size": 2}, timeout=30).json()
    assert len(page["items"]) == 2 and page["next_page_token"]
    got = requests.post(f"{url}/http-ukbench/items/get", json={"ids": [photos[1].stem, "nope"]}, timeout=30).json()
    assert [i["id"] for i in got["items"]] == [photos[1].stem] and got["not_found"] == ["nope"]
    removed = requests.post(f"{url}/http-ukbench/items/remove", json={"ids": [photos[1].stem]}, timeout=30).json()
    assert (removed["removed"], removed["count"]) == (1, 14)
    assert requests.delete(f"{url}/http-ukbench", timeout=30).status_code == 200
    assert requests.get(f"{url}/http-ukbench", timeout=30).status_code == 404


def test_embed_over_json_multipart_and_openai_style_gives_the_grpc_vectors_to_the_bit(server, client):
    expected = client.embed(PHOTOS)["embedding"]
    as_json = requests.post(
        f"{server.http_url}/v1/models/{MODEL}/embed",
        json={"images": [base64.b64encode(p.read_bytes()).decode() for p in PHOTOS], "outputs": ["embedding"]},
        timeout=60,
    ).json()
    vectors = [r["outputs"]["embedding"]["values"] for r in as_json["results"]]
    assert np.array_equal(np.asarray(vectors, np.float32), expected)
    uploaded = requests.post(
        f"{server.http_url}/v1/models/{MODEL}/embed",
        files=[("image", (p.name, p.read_bytes())) for p in PHOTOS],
        timeout=60,
    ).json()
    vectors = [r["outputs"]["embedding"]["values"] for r in uploaded["results"]]
    assert np.array_equal(np.asarray(vectors, np.float32), expected)

    data_url = "data:image/png;base64," + base64.b64encode(PHOTOS[0].read_bytes()).decode()
    plain = [base64.b64encode(p.read_bytes()).decode() for p in PHOTOS[1:]]
    answer = requests.post(
        f"{server.http_url}/v1/embeddings", json={"model": MODEL, "input": [data_url, *plain]}, timeout=60
    ).json()
    assert (answer["object"], answer["model"], answer["usage"]["prompt_tokens"]) == ("list", MODEL, 3)
    assert [d["index"] for d in answer["data"]] == [0, 1, 2]
    assert np.array_equal(np.asarray([d["embedding"] for d in answer["data"]], np.float32), expected)
    packed = requests.post(
        f"{server.http_url}/v1/embeddings",
        json={"model": f"{MODEL}/logits", "input": plain[:1], "encoding_format": "base64"},
        timeout=60,
    ).json()
    logits = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4")
    assert np.array_equal(logits, client.embed(PHOTOS[1:2])["logits"][0])


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/v1/collections", {"name": "bad name!", "model": MODEL}, 400, "name 'bad name!' is invalid"),
        ("POST", "/v1/collections", {"name": "x", "model": MODEL, "shards": 3}, 400, 'no field named "shards"'),
        ("POST", "/v1/collections/nope/search", {"k": 3, "id": "a"}, 404, "no collection named 'nope'"),
        ("POST", "/v1/collections/nope/search", "[1, 2]", 400, "send an object"),
        ("POST", "/v1/collections/nope/search", "{not json", 400, "not valid JSON"),
        ("POST", "/v1/collections/x/search", {"collection": "y"}, 400, "the path says 'x'"),
        ("POST", f"/v1/models/{MODEL}/embed", {"images": ["bm90IGFuIGltYWdl"]}, 400, "image 0"),
        ("POST", f"/v1/models/{MODEL}/embed", {}, 400, "no images"),
        ("GET", "/v1/collections/x/items?page_size=zz", None, 400, "page_size"),
        ("GET", "/v1/collections/x/items?colour=red", None, 400, "'colour' is not a field of ListItemsRequest"),
        ("POST", f"/v2/models/{MODEL}/infer", {"inputs": []}, 400, "takes one input"),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            {"inputs": [{"name": "image", "shape": [1, 3], "datatype": "FP32", "data": ["a", "b", "c"]}]},
            400,
            "not numbers",
        ),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            {"inputs": [{"name": "pixels", "shape": [1], "datatype": "INT64", "data": [1]}]},
            400,
            "FP32, UINT8 or BYTES",
        ),
        ("POST", "/v2/models/no-such-model/infer", {"inputs": []}, 404, "no-such-model"),
        ("POST", "/v1/embeddings", {"model": MODEL, "input": ["a cat on a mat"]}, 400, "not base64"),
        ("POST", "/v1/embeddings", {"model": MODEL, "input": ["aGk="], "dimensions": 8}, 400, "not supported"),
        ("GET", "/v1/nothing-here", None, 404, "/openapi.json"),
        ("PUT", "/v1/collections", None, 405, "does not take PUT"),
    ],
)
def test_bad_requests_get_a_precise_status_and_a_json_error_naming_the_fix(server, method, path, body, status, words):
    data = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
    response = requests.request(method, server.http_url + path, data=data, timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_body_beyond_the_limit_is_refused_before_it_is_read_whole(server):
    limit = 64 << 20  # max_message_bytes' default
    host, port = server.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:  # declares the size, sends none of it
        connection.sendall(
            f"POST /v1/models/{MODEL}/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n".encode()
        )
        answer = connection.makefile("rb").read().decode()  # the server closes: the body it declared is unread
    assert answer.startswith("HTTP/1.1 413") and f"{limit + 1} bytes, more than the limit" in answer
    chunked = requests.post(  # no declared size: refused once the limit is passed
        f"{server.http_url}/v1/models/{MODEL}/embed", data=iter([b"x" * (1 << 20)] * 65), timeout=60
    )
    assert chunked.status_code == 413 and "more than the limit" in chunked.json()["error"]


def test_calls_get_request_ids_counts_and_access_log_lines(server):
    response = requests.get(f"{server.http_url}/v1/models", headers={"x-request-id": "http-trace-1"}, timeout=30)
    assert response.headers["x-request-id"] == "http-trace-1"
    assert requests.get(f"{server.http_url}/v1/collections/none", timeout=30).headers["x-request-id"]
    text = requests.get(server.metrics_url, timeout=10).text
    assert 'offshelf_http_requests_total{method="GET",model="",route="/v1/models",status="200"}' in text
    assert 'offshelf_http_requests_total{method="GET",model="",route="/v1/collections/{name}",status="404"}' in text
    lines = [e for e in server.logs if e.get("request_id") == "http-trace-1"]
    assert [(e["protocol"], e["rpc"], e["status"]) for e in lines] == [("http", "ListModels", 200)]


def test_the_openapi_document_is_valid_and_lists_exactly_the_routes_served(server):
    from openapi_spec_validator import validate

    document = requests.get(f"{server.http_url}/openapi.json", timeout=30).json()
    validate(document)
    listed = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert ("POST", "/v1/collections/{name}/search") in listed and ("POST", "/v2/models/{model}/infer") in listed
    for method, path in listed:  # each answers (whatever the status), none with "no route" or "does not take"
        model = "no-such-model" if path.startswith("/v2/repository") else MODEL  # the model stays loaded
        concrete = path.replace("{model}", model).replace("{version}", "1").replace("{name}", "none")
        response = requests.request(method, server.http_url + concrete, data=b"{}", timeout=60)
        assert response.status_code not in (405, 500), (method, path, response.text)
        assert "no route" not in response.text, (method, path)
    search = document["paths"]["/v1/collections/{name}/search"]["post"]
    assert search["x-offshelf-rpc"] == "/offshelf.v1.Index/Search"
    assert set(search["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    request = document["components"]["schemas"]["offshelf.v1.SearchRequest"]["properties"]
    assert request["k"] == {"type": "integer", "format": "int32"} and request["filter"]["$ref"].endswith("Filter")


def test_answers_are_protobufs_json_mapping_as_json_format_writes_it():
    """The door writes JSON with a converter of its own (json_format's is 50x slower on vectors): the same dict as
    MessageToDict for messages with every kind of field, set and unset."""
    from google.protobuf import json_format

    from offshelf.protos.v1 import embedding_pb2, heads_pb2, index_pb2
    from offshelf.service.http.json_api import answer_json

    vector = embedding_pb2.Vector(values=[0.1, -2.5, 3e-8], dim=3)
    messages = [
        index_pb2.Collection(name="c", count=5, metric=index_pb2.METRIC_L2, binding=index_pb2.Binding(version=2)),
        index_pb2.SearchRequest(collection="c", image=b"\x00\xff", k=3, min_score=0.5, filter=index_pb2.Filter()),
        index_pb2.SearchRequest(id="q"),
        index_pb2.SearchResponse(hits=[index_pb2.Hit(id="a", score=0.25, label="x", metadata={"k": "v"})]),
        index_pb2.GetItemsResponse(items=[index_pb2.StoredItem(id="a", vector=vector)], not_found=["b"]),
        embedding_pb2.EmbedResponse(
            model="m", version=1, results=[embedding_pb2.ImageEmbeddings(outputs={"e": vector})]
        ),
        heads_pb2.HeadJob(head="h", version=2, state=heads_pb2.JOB_STATE_RUNNING, progress=0.5),
        heads_pb2.ListHeadsResponse(),
    ]
    for message in messages:
        expected = json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
            unquote_int64_if_possible=True,
        )
        assert as_float32(json.loads(json.dumps(answer_json(message)))) == as_float32(expected), message


def as_float32(value):
    """Floats as the float32 they stand for (json_format writes a float32's shortest text; offshelf, the double that
    holds it exactly)."""
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_float32(v) for v in value]
    return np.float32(value) if isinstance(value, float) else value


def test_a_collection_with_thumbnails_returns_them_with_hits_and_items_and_drops_them_with_the_item(server):
    import io

    from PIL import Image

    url = f"{server.http_url}/v1/collections"
    created = requests.post(url, json={"name": "thumbs", "model": MODEL, "thumbnail_size": 96}, timeout=30).json()
    assert created["thumbnail_size"] == 96
    photos = ukbench(2)
    files = [("image", (p.stem, p.read_bytes(), "image/jpeg")) for p in photos]
    assert requests.post(f"{url}/thumbs/items", files=files, timeout=60).json()["count"] == 8
    query = {"id": photos[0].stem, "k": 4, "with_thumbnails": True}
    hits = requests.post(f"{url}/thumbs/search", json=query, timeout=60).json()["hits"]
    for hit in hits:
        with Image.open(io.BytesIO(base64.b64decode(hit["thumbnail"]))) as shown:
            assert shown.format == "JPEG" and max(shown.size) == 96  # 320x240 photos: 96x72
    with Client(server.address, timeout=60) as sdk:  # the SDK asks for them too
        (first,) = sdk.search("thumbs", id=photos[0].stem, k=1, with_thumbnails=True)
        (listed_item,) = sdk.get_items("thumbs", [photos[0].stem], with_thumbnails=True)
        (batched,) = sdk.search_batch("thumbs", ids=[photos[0].stem], k=1, with_thumbnails=True)
    assert first.thumbnail == listed_item.thumbnail == batched[0].thumbnail == base64.b64decode(hits[0]["thumbnail"])
    plain = requests.post(f"{url}/thumbs/search", json={**query, "with_thumbnails": False}, timeout=60).json()
    assert {hit["thumbnail"] for hit in plain["hits"]} == {""}
    listed = requests.get(f"{url}/thumbs/items", params={"with_thumbnails": "true"}, timeout=30).json()["items"]
    assert len(listed) == 8 and all(item["thumbnail"] for item in listed)
    requests.post(f"{url}/thumbs/items/remove", json={"ids": [photos[0].stem]}, timeout=30)
    requests.post(f"{url}/thumbs/items", json={"items": [{"id": photos[0].stem, "vector": {"values": [0.5] * 1280}}]})
    got = requests.post(f"{url}/thumbs/items/get", json={"ids": [photos[0].stem], "with_thumbnails": True}).json()
    assert got["items"][0]["thumbnail"] == ""  # removed with its item, not back with a vector under its id
    refused = requests.post(url, json={"name": "t2", "dim": 8, "thumbnail_size": 96}, timeout=30)
    assert refused.status_code == 400 and "needs a collection of images" in refused.json()["error"]
    assert requests.post(url, json={"name": "t3", "model": MODEL, "thumbnail_size": 4096}).status_code == 400
    requests.delete(f"{url}/thumbs", timeout=30)


def test_a_head_is_trained_listed_classifies_uploads_and_is_deleted_over_json(server, client):
    photos = {cls: shared_photos(f"hymenoptera/train/{cls}", 6) for cls in ("ants", "bees")}
    images = [
        {"image": base64.b64encode(p.read_bytes()).decode(), "label": cls} for cls, ps in photos.items() for p in ps
    ]
    body = {"name": "http-bugs", "kind": "ncm", "images": {"model": MODEL, "images": images}}
    job = requests.post(f"{server.http_url}/v1/heads", json=body, timeout=60).json()
    assert (job["head"], job["version"]) == ("http-bugs", 1)
    client.wait_for_head("http-bugs")
    head = requests.get(f"{server.http_url}/v1/heads/http-bugs", timeout=30).json()
    assert head["versions"] == [1] and sorted(head["card"]["labels"]) == ["ants", "bees"]
    assert "http-bugs" in {
        h["card"]["name"] for h in requests.get(f"{server.http_url}/v1/heads", timeout=30).json()["heads"]
    }
    queries = [p for cls in ("ants", "bees") for p in shared_photos(f"hymenoptera/val/{cls}", 2)]
    classified = requests.post(
        f"{server.http_url}/v1/heads/http-bugs/classify",
        files=[*[("image", (p.name, p.read_bytes())) for p in queries], ("request", (None, '{"k": 2}'))],
        timeout=60,
    ).json()
    expected = client.classify(queries, "http-bugs", k=2)
    got = [[(t["label"], np.float32(t["probability"])) for t in r["top"]] for r in classified["results"]]
    assert got == [[(label, np.float32(p)) for label, p in top] for top in expected]
    assert requests.delete(f"{server.http_url}/v1/heads/http-bugs", timeout=30).status_code == 200
    assert requests.get(f"{server.http_url}/v1/heads/http-bugs", timeout=30).status_code == 404
