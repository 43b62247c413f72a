"""Selection: scoring the pool, clustering, greedy group selection, and the selection artifact."""
