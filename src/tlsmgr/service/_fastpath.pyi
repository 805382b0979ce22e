from collections.abc import Callable, Sequence
from typing import Any

from .scache import SessionCache

def encode_base64(data: bytes) -> bytes: ...

# name, attribute names, codes (requests.Kind.code), reply kind
# (protocol.AS_IS, SESSION, TRUTH), handler, reply parts
CompiledRequest = tuple[bytes, tuple[bytes, ...], bytes, str, Callable[..., Any],
                        tuple[bytes, ...]]

class FastPath:
    def __init__(self, size_limit: int, requests: tuple[CompiledRequest, ...],
                 caches: dict[bytes, SessionCache], bounds: Sequence[float],
                 key_name_length: int, seed_max: int,
                 settled: Callable[[bytes, int, list[int], float], None],
                 failure: Callable[[bytes, Exception], bytes]) -> None: ...
    def answer(self, data: bytes, write: Callable[[bytes], Any], since: float) -> bool: ...
    def settle(self) -> None: ...
