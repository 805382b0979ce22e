from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .scache import SessionCache
from .stats import Histogram

def encode_base64(data: bytes) -> bytes: ...

class FastPath:
    def __init__(self, size_limit: int, counts: dict[bytes, int],
                 latency: Mapping[bytes, Histogram], bounds: Sequence[float],
                 caches: dict[bytes, SessionCache], cache_replies: tuple[bytes, ...],
                 replies: dict[str, Callable[..., bytes]],
                 failure: Callable[[bytes, Exception], bytes]) -> None: ...
    def answer(self, data: bytes, write: Callable[[bytes], Any], since: float) -> bool: ...
    def settle(self) -> None: ...
