"""Several control-plane replicas on one PostgreSQL and one Redis (docs/deploy.md).

A runner's tunnel ends on whichever replica its connection reached; a
request may arrive at any replica. Redis carries what must cross between
them: which replica holds which runner (``registry.py``), each relayed
request's frames both ways (``bus.py``, ``remote.py``, ``holder.py``) and
the per-key rate limits (``ratelimit.py``). ``node.Cluster`` ties these to
the app's lifespan. Without ``OUTPOST_REDIS_URL`` none of it runs.
"""

from outpost.control_plane.cluster.node import Cluster, new_replica_id
from outpost.control_plane.cluster.ratelimit import RedisRateLimiter

__all__ = ["Cluster", "RedisRateLimiter", "new_replica_id"]
