"""The distributed runtime's transport and roles: framed protocol, handshake, worker, coordinator."""
from dnet.cluster.coordinator import Coordinator, PoisonRequest, RemoteError, WorkerLost
from dnet.cluster.link import LinkShape
from dnet.cluster.local import LocalCluster, WorkerSpec
from dnet.cluster.worker import Worker, WorkerConfig

__all__ = ["Coordinator", "LinkShape", "LocalCluster", "PoisonRequest", "RemoteError", "Worker", "WorkerConfig", "WorkerLost",
           "WorkerSpec"]
