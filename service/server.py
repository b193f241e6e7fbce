"""The serving process: gRPC server (Embedding, Index, Heads, Open Inference Protocol, health, reflection),
metrics endpoint, graceful shutdown."""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from offshelf.protos.inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc, heads_pb2, heads_pb2_grpc, index_pb2, index_pb2_grpc
from offshelf.service import tracing
from offshelf.service.api.auth import Tokens
from offshelf.service.api.embedding import EmbeddingServicer
from offshelf.service.api.heads import HeadsServicer
from offshelf.service.api.health import HealthServicer
from offshelf.service.api.index import IndexServicer
from offshelf.service.api.interceptor import CallSlots, RpcInterceptor
from offshelf.service.api.oip import InferenceServicer
from offshelf.service.api.tls import server_credentials
from offshelf.service.data_lock import DataFolderLock
from offshelf.service.errors import StartupError, Unavailable
from offshelf.service.heads.registry import HeadRegistry
from offshelf.service.http.app import http_app
from offshelf.service.http.door import Door
from offshelf.service.http.listener import HttpListener
from offshelf.service.index.embedded.registry import CollectionRegistry
from offshelf.service.logs import fields
from offshelf.service.metrics import Metrics
from offshelf.service.models import runtime
from offshelf.service.models.registry import ModelRegistry
from offshelf.service.models.runtime import CUDA
from offshelf.service.settings import ServiceSettings
from offshelf.service.state_metrics import GpuCollector, StateCollector

if TYPE_CHECKING:
    from offshelf.service.index.contract import CollectionCatalog
    from offshelf.service.index.milvus.registry import MilvusCollectionRegistry

log = logging.getLogger(__name__)
SERVICES = [
    embedding_pb2.DESCRIPTOR.services_by_name["Embedding"].full_name,
    index_pb2.DESCRIPTOR.services_by_name["Index"].full_name,
    heads_pb2.DESCRIPTOR.services_by_name["Heads"].full_name,
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
]


def authentication(settings: ServiceSettings, metrics: Metrics) -> Tokens | None:
    """The tokens every call must show; None (no authentication) only on loopback or when asked for (--insecure)."""
    if settings.tokens_file is not None:
        return Tokens(settings.tokens_file, metrics.tokens_reload_errors)
    if not settings.insecure and not is_loopback(settings.host):
        raise StartupError(
            f"serving on {settings.host} without --tokens-file would let anyone who reaches the port create, fill "
            "and delete collections and heads: set OFFSHELF_TOKENS_FILE (docs/api.md, Authentication), serve on "
            "--host 127.0.0.1, or set OFFSHELF_INSECURE=true behind something else that authenticates"
        )
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def milvus_registry(settings: ServiceSettings) -> MilvusCollectionRegistry | None:
    """The collections on Milvus when OFFSHELF_MILVUS_URI is set (else the embedded store serves them)."""
    if not settings.milvus_uri:
        return None
    try:  # imported here: pymilvus takes 0.5 s to import, and is an extra
        from offshelf.service.index.milvus.registry import MilvusCollectionRegistry
    except ImportError as err:
        raise StartupError(f"OFFSHELF_MILVUS_URI is set but {err}: pip install 'offshelf[milvus]'") from err

    return MilvusCollectionRegistry(
        settings.milvus_uri,
        settings.milvus_token.get_secret_value(),
        settings.milvus_ca_file,
        settings.milvus_consistency,
        settings.milvus_whitening_fence_seconds,
    )


def listen(server: grpc.Server, address: str, flag: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """The port `server` listens on at `address` (TLS with credentials); StartupError naming `flag` if it cannot."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as err:  # grpcio raises where older versions returned 0
        raise StartupError(f"cannot listen on {address} ({err}); is the port taken? pick a free {flag}") from err
    if port == 0:
        raise StartupError(f"cannot listen on {address}; is the port taken? pick a free {flag}")
    return port


class Server:
    """Starts listening at once (health NOT_SERVING), then loads models and turns SERVING."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.metrics = Metrics()
        self.models = ModelRegistry(settings, self.metrics)
        self.milvus = milvus_registry(settings)
        self.collections: CollectionCatalog = self.milvus or CollectionRegistry(
            settings.data_dir, settings.index_save_seconds, settings.faiss_threads
        )
        self.heads = HeadRegistry(settings.data_dir, self.models, self.collections)
        self.metrics.registry.register(StateCollector(self.collections, self.heads, settings.metrics_collection_labels))
        self.health = HealthServicer()
        self.ready = threading.Event()
        self.grpc_port = 0
        self.metrics_port = 0
        self.health_port = 0
        self._last_bound: set[tuple[str, int]] = set()
        self.data_lock = DataFolderLock(settings.data_dir)
        self.slots = CallSlots(settings.max_concurrent_calls)
        tokens = authentication(settings, self.metrics)
        self._grpc = grpc.server(
            ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="rpc"),
            interceptors=[
                *filter(None, [tracing.configure()]),  # each RPC's span, around everything else
                RpcInterceptor(self.metrics, self.slots, tokens, settings.access_log),
            ],
            options=[
                ("grpc.so_reuseport", 0),  # a port another process holds is a start-up error, not shared
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        embedding = EmbeddingServicer(self.models, settings.max_images_per_request)
        index = IndexServicer(self.collections, self.models, settings, self.metrics)
        heads = HeadsServicer(self.heads, self.models, settings.max_images_per_request)
        protocol = InferenceServicer(self.models, self.heads, settings.max_images_per_request, self.ready.is_set)
        embedding_pb2_grpc.add_EmbeddingServicer_to_server(embedding, self._grpc)
        index_pb2_grpc.add_IndexServicer_to_server(index, self._grpc)
        heads_pb2_grpc.add_HeadsServicer_to_server(heads, self._grpc)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(protocol, self._grpc)
        self._http = self._http_door(tokens, protocol, {"Embedding": embedding, "Index": index, "Heads": heads})
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        self._health_grpc: grpc.Server | None = None
        if settings.health_port is not None:  # its own threads: answered whatever the load on the main port
            self._health_grpc = grpc.server(
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"), options=[("grpc.so_reuseport", 0)]
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_grpc)
        if settings.reflection:
            reflection.enable_server_reflection([*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], self._grpc)

    def _http_door(
        self, tokens: Tokens | None, protocol: InferenceServicer, servicers: dict[str, object]
    ) -> HttpListener | None:
        """The HTTP door on --http-port, on the same servicers, slots, tokens and TLS files; None when unset."""
        settings = self.settings
        if settings.http_port is None:
            return None
        door = Door(
            self.metrics,
            self.slots,
            tokens,
            settings.access_log,
            settings.max_message_bytes,
            settings.max_concurrent_calls,
        )
        prefixed = {f"/offshelf.v1.{name}/": servicer for name, servicer in servicers.items()}
        app = http_app(door, protocol, prefixed, self.models, settings.max_images_per_request)
        tls = (
            (settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            if settings.tls_cert and settings.tls_key
            else None
        )
        return HttpListener(app, settings.host, settings.http_port, tls, settings.grace_seconds)

    def start(self) -> None:
        self.data_lock.acquire()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        settings = self.settings
        credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        self.grpc_port = listen(self._grpc, address, "--port", credentials)
        self._grpc.start()
        if self._health_grpc is not None:
            self.health_port = listen(self._health_grpc, f"{settings.host}:{settings.health_port}", "--health-port")
            self._health_grpc.start()
        try:
            self.metrics_port = self.metrics.serve(self.settings.host, self.settings.metrics_port)
        except OSError as err:
            raise StartupError(
                f"cannot serve metrics on {self.settings.host}:{self.settings.metrics_port} ({err}); "
                "pick a free --metrics-port"
            ) from err
        ports = {"grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        if self._http is not None:
            self._http.start()
            ports["http_port"] = self._http.port
        if self._health_grpc is not None:
            ports["health_port"] = self.health_port
        log.info("listening", extra=fields(**ports))

    def _share_heads(self, milvus: MilvusCollectionRegistry) -> None:
        """Heads live in Milvus beside the collections; trained once, through a lease in Milvus's etcd."""
        from offshelf.service.heads.shared import EtcdLeases, SharedHeads

        _, blobs = milvus.connected()  # connected by load_all
        leases = EtcdLeases(self.settings.milvus_etcd_uri) if self.settings.milvus_etcd_uri else None
        self.heads.share(SharedHeads(blobs), leases, self.settings.heads_sync_seconds)

    def load(self) -> None:
        """Loads every model and restores every collection, then reports SERVING."""
        started = time.perf_counter()
        self.models.load_all()
        self.collections.load_all()
        if self.milvus is not None:
            self._share_heads(self.milvus)
        self.heads.load_all()
        self.models.bound = self._bound_versions
        self.models.sync()  # versions that collections and heads are bound to, beyond the version policies
        if self.settings.repository_poll_seconds:
            self.models.poll(self.settings.repository_poll_seconds)
        on_cuda = any(m.runtime.provider == CUDA for versions in self.models.all().values() for m in versions)
        gpu = GpuCollector.create() if on_cuda else None
        if gpu is not None:
            self.metrics.registry.register(gpu)
        self.ready.set()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.milvus is not None:  # the Index service is NOT_SERVING while Milvus does not answer
            self.milvus.watch(self._index_health)
        log.info(
            "serving",
            extra=fields(
                grpc_port=self.grpc_port,
                metrics_port=self.metrics_port,
                onnxruntime=runtime.installed(),
                seconds=round(time.perf_counter() - started, 2),
            ),
        )

    def _bound_versions(self) -> set[tuple[str, int]]:
        """The model versions collections and heads were built on: kept loaded whatever the version policy. While
        Milvus does not answer, those of its last answer."""
        try:
            bindings = [c.config.binding for c in self.collections.all()]
        except Unavailable:
            return self._last_bound
        bindings += [entry.served.binding for entry in self.heads.all() if entry.served is not None]
        self._last_bound = {(b.model, b.version) for b in bindings}
        return self._last_bound

    def _index_health(self, up: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(index_pb2.DESCRIPTOR.services_by_name["Index"].full_name, status)

    def _set_health(self, status: int) -> None:
        for service in ["", *SERVICES]:
            self.health.set(service, status)

    def stop(self, drain: bool = True) -> None:
        """Reports NOT_SERVING for drain_seconds (when draining), lets the calls in progress finish while holding
        new ones, stops taking calls, refuses the held ones (UNAVAILABLE), closes. Within drain + grace seconds."""
        self.ready.clear()
        self.health.enter_graceful_shutdown()
        if drain:
            log.info("draining", extra=fields(drain_seconds=self.settings.drain_seconds))
            time.sleep(self.settings.drain_seconds)
        deadline = time.monotonic() + self.settings.grace_seconds
        self.slots.close(self.settings.grace_seconds)  # new calls held while the calls in progress end
        stopped = self._grpc.stop(max(0.0, deadline - time.monotonic()))
        if self._http is not None:
            self._http.stop_taking_calls()
        self.slots.refuse_held()
        stopped.wait()
        if self._http is not None:
            self._http.join()
        if self._health_grpc is not None:
            self._health_grpc.stop(0).wait()
        self.heads.close()
        self.collections.close()
        self.models.close()
        self.metrics.close()
        tracing.shutdown()
        self.data_lock.release()
        log.info("stopped")


def serve(settings: ServiceSettings) -> int:
    """Runs until SIGTERM or SIGINT; returns the process exit code."""
    try:
        server = Server(settings)
    except StartupError as err:
        log.error("cannot start serving", extra=fields(error=str(err)))
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
        server.load()
    except StartupError as err:
        log.error("cannot start serving", extra=fields(error=str(err)))
        server.stop(drain=False)
        return 1
    stop.wait()
    server.stop()
    return 0
