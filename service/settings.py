"""Settings of the serving process: flags of ``offshelf serve`` or environment variables ``OFFSHELF_*``."""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import Field, JsonValue, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def metavar(name: str) -> dict[str, JsonValue]:
    """What ``offshelf serve --help`` shows for a setting's value, where its type alone would not say (a unit)."""
    return {"metavar": name}


class ServiceSettings(BaseSettings):
    """Serves a model repository over gRPC. Each setting is a flag or an OFFSHELF_* environment variable; flags win."""

    model_config = SettingsConfigDict(
        env_prefix="OFFSHELF_", extra="forbid", cli_prog_name="offshelf serve", cli_kebab_case=True
    )

    repo: pathlib.Path = Field(description="Model repository: <repo>/<model>/<version>/{model.onnx,card.json}.")
    host: str = Field(
        "127.0.0.1",
        description="Address the gRPC and metrics servers listen on; any other than loopback needs --tokens-file "
        "(or --insecure).",
        json_schema_extra=metavar("HOST"),
    )
    tokens_file: pathlib.Path | None = Field(
        None,
        description="Bearer tokens with roles (read, write, admin), one '<role> <sha256 hex of the token>' per "
        "line; read again when it changes. Every RPC but health and reflection then needs a token.",
        json_schema_extra=metavar("PATH"),
    )
    tls_cert: pathlib.Path | None = Field(
        None,
        description="PEM certificate chain of the gRPC port; with --tls-key, the port speaks TLS only. Read again "
        "when it changes (a rotated Secret), for new connections.",
        json_schema_extra=metavar("PATH"),
    )
    tls_key: pathlib.Path | None = Field(
        None, description="PEM private key of --tls-cert.", json_schema_extra=metavar("PATH")
    )
    tls_client_ca: pathlib.Path | None = Field(
        None,
        description="PEM CA certificates: every client must present a certificate one of them signed (mutual TLS).",
        json_schema_extra=metavar("PATH"),
    )
    metrics_collection_labels: bool = Field(
        False,
        description="Collection and head names as Prometheus label values; off, each is 'sha256:' and 12 hex "
        "digits of the name's SHA-256 (names can be tenants').",
    )
    reflection: bool = Field(
        True, description="Serve gRPC reflection (grpcurl lists the API without the .proto files); off hides it."
    )
    insecure: bool = Field(
        False,
        description="Serve on a non-loopback --host without --tokens-file: anyone reaching the port may do "
        "anything. Only behind something else that authenticates.",
    )
    port: int = Field(
        50051,
        ge=0,
        le=65535,
        description="gRPC port; 0 picks a free one (logged at start).",
        json_schema_extra=metavar("PORT"),
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A second, plaintext port that serves only the gRPC health service: for Kubernetes' gRPC "
        "probes, which speak neither TLS nor tokens. 0 picks a free one (logged at start); unset: none.",
        json_schema_extra=metavar("PORT"),
    )
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTP port: JSON API (/v1), Open Inference Protocol REST (/v2), /v1/embeddings, search page (/), "
        "with the gRPC port's tokens, TLS and limits. 0 picks a free one (logged at start); unset: none.",
        json_schema_extra=metavar("PORT"),
    )
    metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint; 0 picks a free one.",
        json_schema_extra=metavar("PORT"),
    )
    repository_poll_seconds: float = Field(
        10.0,
        ge=0,
        description="How often the model repository is checked for new, removed or reconfigured versions, which "
        "are then loaded (warmed up first) or unloaded (after their requests in flight); 0: only at start and on "
        "explicit loads (RepositoryModelLoad).",
        json_schema_extra=metavar("SECONDS"),
    )
    allow_links_outside_repo: bool = Field(
        False,
        description="Serve model and version folders (and their files) that are symbolic links to somewhere outside "
        "--repo; off, they are refused (RepositoryIndex says why), so that whoever can write the repository "
        "cannot make the server read other files.",
    )
    execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: CUDA when it really works, else CPU; cuda: fail unless CUDA works."
    )
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per model; 0 lets onnxruntime choose.")
    instances: int = Field(
        2,
        ge=1,
        description="Batches a model runs at once (Triton's instance count). A batch that runs alone gets "
        "--intra-op-threads threads (0: every core); one that starts while another runs gets its share of them.",
    )
    intra_op_spinning: bool = Field(
        True,
        description="Let onnxruntime's idle intra-op threads spin (its default) instead of sleeping: lower latency, "
        "but spinning threads take CPU that decoding could use.",
    )
    inference_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="Linux nice value of the inference threads. Above the RPC threads' 0, so that when inference "
        "saturates the CPU, calls beyond the limits are still refused and health checks answered at once; "
        "inference takes the cycles they leave. 0: same priority.",
    )
    max_batch_size: int = Field(16, ge=1, description="Most images one inference call takes.")
    max_batch_delay_ms: float = Field(
        5.0,
        ge=0,
        description="Longest an image waits for others to fill its batch, in milliseconds.",
        json_schema_extra=metavar("MS"),
    )
    eager_batching: bool = Field(
        True,
        description="A batch waits for others only while more requests are decoding; a lone request runs at once. "
        "Off: every batch waits up to --max-batch-delay-ms to fill (Triton's way; fuller batches, for GPUs).",
    )
    max_queue_images: int = Field(
        512, ge=1, description="Images that may wait per model; beyond that requests get UNAVAILABLE at once."
    )
    max_images_per_request: int = Field(64, ge=1, description="Most images one Embed request may carry.")
    max_image_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Largest accepted image, in pixels (width x height; a WebP's count 4 times: its decoder takes 4x "
        "the memory).",
        json_schema_extra=metavar("PIXELS"),
    )
    max_decode_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Pixels decoded at once over every request (each takes 3-8 bytes while it is decoded and "
        "resized); larger images wait for others to finish. At least --max-image-pixels.",
        json_schema_extra=metavar("PIXELS"),
    )
    max_message_bytes: int = Field(
        64 << 20, ge=1 << 20, description="Largest gRPC message, in bytes.", json_schema_extra=metavar("BYTES")
    )
    max_response_bytes: int = Field(
        32 << 20,
        ge=1 << 20,
        description="Largest Search, SearchBatch, GetItems or ListItems response, in bytes, checked before it is "
        "built (hits or items with their metadata and vectors): larger ones are refused INVALID_ARGUMENT. At most "
        "--max-message-bytes.",
        json_schema_extra=metavar("BYTES"),
    )
    worker_threads: int = Field(64, ge=2, description="Threads that handle RPCs.")
    max_concurrent_calls: int = Field(
        48,
        ge=1,
        description="Calls handled at once, health checks aside; beyond that calls get UNAVAILABLE at once. Below "
        "--worker-threads, so that threads stay free to refuse calls and answer health checks under overload.",
    )
    drain_seconds: float = Field(
        1.0,
        ge=0,
        description="On SIGTERM, how long health reports NOT_SERVING before new calls are refused.",
        json_schema_extra=metavar("SECONDS"),
    )
    grace_seconds: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, how long in-flight calls may take to finish.",
        json_schema_extra=metavar("SECONDS"),
    )
    data_dir: pathlib.Path = Field(
        pathlib.Path("offshelf-data"), description="Folder of the durable collections (created if missing)."
    )
    max_items_per_add: int = Field(1000, ge=1, description="Most items one Add (or one AddStream message) carries.")
    max_search_k: int = Field(1000, ge=1, description="Most results one Search may ask for.")
    faiss_threads: int = Field(
        1,
        ge=0,
        description="OpenMP threads of one FAISS call; 0 lets FAISS use every core. Concurrent requests "
        "already run in parallel, so more threads per call oversubscribe the CPU under load.",
    )
    index_save_seconds: float = Field(
        60.0,
        gt=0,
        description="How often a collection's FAISS index is saved when it lacks writes. Every write is durable "
        "in SQLite when acknowledged; this bounds what a restart re-adds to the index.",
        json_schema_extra=metavar("SECONDS"),
    )
    milvus_uri: str = Field(
        "",
        description="Milvus to keep collections and trained heads in, e.g. http://milvus:19530, so that any number "
        "of replicas share them; empty: the embedded store under --data-dir.",
        json_schema_extra=metavar("URI"),
    )
    milvus_token: SecretStr = Field(
        SecretStr(""), description="Milvus token (user:password, or an API key).", json_schema_extra=metavar("TOKEN")
    )
    milvus_ca_file: str = Field(
        "",
        description="PEM file of the CA that signed Milvus's certificate (https URIs).",
        json_schema_extra=metavar("PATH"),
    )
    milvus_consistency: Literal["Strong", "Session", "Bounded", "Eventually"] = Field(
        "Bounded",
        description="Consistency of searches and collection counts on Milvus. Writes are acknowledged only once "
        "Milvus serves them, so Bounded (no wait) sees every acknowledged write with one in-memory replica of a "
        "collection; Strong also waits for Milvus's time tick (up to two ticks per search) and is needed when "
        "Milvus loads collections with several replicas. Item reads are always Strong.",
    )
    milvus_etcd_uri: str = Field(
        "",
        description="etcd of the Milvus deployment, e.g. http://milvus-etcd:2379: holds the lease that makes a head's "
        "training run on one replica. Empty: leases are not taken.",
        json_schema_extra=metavar("URI"),
    )
    milvus_whitening_fence_seconds: float = Field(
        30.0,
        gt=0,
        description="With Milvus: a whitening renews its fence this often x3; when a replica dies whitening, writes "
        "to the collection resume (the whitening undone) this long after its last renewal.",
        json_schema_extra=metavar("SECONDS"),
    )
    heads_sync_seconds: float = Field(
        5.0,
        gt=0,
        description="With Milvus: how often a replica loads the heads that other replicas trained.",
        json_schema_extra=metavar("SECONDS"),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    access_log: bool = Field(
        True, description="One INFO line per call (health checks aside): rpc, code, ms, model, images, peer, request id"
    )

    @model_validator(mode="after")
    def _limits_fit(self) -> ServiceSettings:
        if self.max_concurrent_calls >= self.worker_threads:
            raise ValueError(
                f"max_concurrent_calls ({self.max_concurrent_calls}) must be below worker_threads "
                f"({self.worker_threads}): the spare threads refuse calls and answer health checks under overload"
            )
        if self.max_response_bytes > self.max_message_bytes:
            raise ValueError(
                f"max_response_bytes ({self.max_response_bytes}) must be at most max_message_bytes "
                f"({self.max_message_bytes}): gRPC would refuse to send such a response only after it was built"
            )
        return self
