"""A store on the network, called as if it blocked: for tests that drive
one step by step, each call run on an event loop of the test's own until
Redis has answered."""

import asyncio

from tlsmgr.stores import Limits
from tlsmgr.util.pending import Later


class Blocking:
    def __init__(self, store):
        self.store = store
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def call(*args, **kwargs):
            async def asked():
                answer = method(*args, **kwargs)
                return await answer if isinstance(answer, Later) else answer
            return self.loop.run_until_complete(asked())
        return call

    def put(self, cache_id, packed):
        return self.save(cache_id, packed, Limits(), 0)

    def idle(self, seconds):
        """Let the loop run (the breaker's probe, say) for a while."""
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def shut(self):
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
