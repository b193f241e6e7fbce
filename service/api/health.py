"""gRPC health with List: grpcio-health-checking's servicer answers Check and Watch, but List (added to the
protocol later) falls through to the generated stub, which raises."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.HealthServicer):
    def List(
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service this server reports on ("" is the whole server) and its status."""
        with self._lock:  # the statuses Check reads, under the lock set() takes
            statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()}
        )
